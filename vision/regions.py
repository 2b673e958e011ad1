"""Float regions for mixed precision: whole blocks of the graph, never scattered layers.

Each layer kept in float between INT8 neighbours adds a dequantize before it and a quantize after it; kept one by
one (the layers an SQNR ranking picks are spread over the network) those transitions cost more than the INT8
layers save, and the "mixed" model ends up slower than FP32 (issue 26: 193 float layers, 0.76x FP32). A region is a
module of the export (``/model.4/...`` is one C2f, ``/model.22/cv3.1/...`` one branch of the detection head),
joined with the single-layer modules before it (a stride-2 Conv and the C2f it feeds), so every region holds at
least two connected compute layers. That is also TensorRT's rule for explicit quantization: Q/DQ around whole
Conv-BN-SiLU blocks, no isolated float layer between INT8 neighbours (``isolated_float_layers`` checks it).

Exports without module paths in their node names (every node its own "module") fall back to runs of consecutive
nodes holding two compute layers each.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import onnx

from vision.graph import COMPUTE_OPS


@dataclass(frozen=True)
class Region:
    name: str  # the module(s) it spans, e.g. "model.3–model.4" or "model.22/cv3.1"
    nodes: tuple[str, ...]  # every node of the region, compute layers and the ops between them
    layers: int  # compute layers (Conv / Gemm / MatMul) among them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _module(name: str, split: Collection[str]) -> str:
    """The module a node belongs to: the first component of its path (``/model.4/m.0/cv1/conv/Conv`` ->
    ``model.4``), two components inside the modules in ``split`` (the detection head: one region per branch)."""
    parts = [p for p in name.split("/") if p]
    if len(parts) < 2:
        return name
    return "/".join(parts[:2]) if parts[0] in split and len(parts) > 2 else parts[0]


def float_regions(model: onnx.ModelProto, head: Collection[str] = (), min_layers: int = 2) -> list[Region]:
    """Partition the nodes of ``model`` outside ``head`` (which stays float anyway) into regions in graph order.

    Modules are taken whole; a module with a compute layer starts a new region only once the current one has
    ``min_layers`` compute layers, so single-layer modules join the module after them and modules without compute
    layers (Concat, Upsample) join the region before them. The modules holding ``head`` nodes are split by their
    second path component."""
    head = set(head)
    nodes = [n for n in model.graph.node if n.name and n.name not in head]
    split = {p[0] for p in ([q for q in name.split("/") if q] for name in head) if len(p) > 1}
    modules: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        modules.setdefault(_module(node.name, split), []).append(node)
    groups: list[tuple[list[str], list[str], int]] = []  # (modules with compute layers, nodes, compute layers)
    for module, members in modules.items():
        layers = sum(n.op_type in COMPUTE_OPS for n in members)
        if not layers and module in split:
            continue  # the head module's own glue (per-level Concat/Reshape) belongs to no one branch
        if layers and (not groups or groups[-1][2] >= min_layers):
            groups.append(([], [], 0))
        if not groups:
            groups.append(([], [], 0))
        names, group_nodes, count = groups[-1]
        groups[-1] = ([*names, module] if layers else names, [*group_nodes, *(n.name for n in members)],
                      count + layers)
    if len(groups) > 1 and groups[-1][2] < min_layers:  # a short tail joins the region before it
        names, group_nodes, count = groups.pop()
        last = groups[-1]
        groups[-1] = ([*last[0], *names], [*last[1], *group_nodes], last[2] + count)
    return [Region(_label(names), tuple(group_nodes), count) for names, group_nodes, count in groups if count]


def _label(modules: Sequence[str]) -> str:
    return modules[0] if len(modules) == 1 else f"{modules[0]}–{modules[-1]}"


def region_nodes(regions: Iterable[Region]) -> list[str]:
    return [name for region in regions for name in region.nodes]


def isolated_float_layers(model: onnx.ModelProto, float_nodes: Collection[str]) -> list[str]:
    """Float compute layers between INT8 neighbours: compute layers reach them and they reach compute layers
    (through non-compute ops), and all of those are INT8. The islands TensorRT's fusion cannot absorb; none in any
    union of regions (a float layer that only feeds the float decode tail, like the head's DFL, is not one)."""
    compute = {n.name for n in model.graph.node if n.op_type in COMPUTE_OPS}
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def neighbours(node: onnx.NodeProto, upstream: bool) -> set[str]:
        found: set[str] = set()
        stack, seen = [node], {node.name}
        while stack:
            current = stack.pop()
            nexts = ([producer[i] for i in current.input if i in producer] if upstream
                     else [c for o in current.output for c in consumers.get(o, [])])
            for other in nexts:
                if other.name in seen:
                    continue
                seen.add(other.name)
                if other.name in compute:
                    found.add(other.name)
                else:
                    stack.append(other)
        return found

    floats = set(float_nodes)
    isolated = []
    for node in model.graph.node:
        if node.name not in compute or node.name not in floats:
            continue
        before, after = neighbours(node, True), neighbours(node, False)
        if before and after and not ((before | after) & floats):
            isolated.append(node.name)
    return isolated


def count_by_region(nodes: Iterable[str], regions: Iterable[Region], head: Collection[str] = ()) -> dict[str, int]:
    """How many of ``nodes`` fall in each region (``head`` under "head", anything else under "other"), in region
    order: what a report prints instead of a long list of node names."""
    where = {name: region.name for region in regions for name in region.nodes}
    head = set(head)
    counts: dict[str, int] = {}
    for name in nodes:
        key = "head" if name in head else where.get(name, "other")
        counts[key] = counts.get(key, 0) + 1
    order = ["head", *dict.fromkeys(where.values()), "other"]
    return {key: counts[key] for key in order if key in counts}


def regions_from_dicts(records: Iterable[Mapping[str, Any]]) -> list[Region]:
    return [Region(r["name"], tuple(r["nodes"]), int(r["layers"])) for r in records]
