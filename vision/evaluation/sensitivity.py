"""Per-layer INT8 sensitivity and the accuracy-budgeted search for layers to keep out of INT8.

Sensitivity is measured, not guessed: the FP32 model and the all-INT8 model run on the same images with every
compute layer's output exposed, and each layer's SQNR (signal-to-quantization-noise ratio, dB) is compared with
the SQNR of its inputs. The difference is the error that layer itself adds; layers adding the most are kept in
float first, through ``nodes_to_exclude`` of the Q/DQ writers (a float layer between INT8 neighbours reads
dequantized inputs, its neighbours stay INT8). The detection head's all-anchor part starts in float, which is
what the field learnt for YOLO (FACTS §2).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quant_common.errors import QuantError

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class LayerError:
    node: str
    op_type: str
    output: str
    sqnr_db: float  # of the layer's output in the INT8 model against FP32 (accumulated error)
    added_db: float  # SQNR lost in this layer: min SQNR of its inputs minus SQNR of its output

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """10·log10(‖ref‖² / ‖ref − cand‖²); +inf when identical."""
    ref = reference.astype(np.float64).ravel()
    noise = float(np.sum((ref - candidate.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))


def compute_layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS]


def _with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return copy.SerializeToString()


def _run_exposed(model: onnx.ModelProto, names: list[str], feeds: Sequence[Mapping[str, np.ndarray]],
                 threads: int | None) -> list[dict[str, np.ndarray]]:
    from vision.backends.onnxrt import create_session

    session = create_session(_with_outputs(model, names), threads=threads)
    return [dict(zip(names, session.run(names, dict(f)), strict=True)) for f in feeds]


def layer_errors(fp32_path: str | os.PathLike[str], int8_path: str | os.PathLike[str],
                 feeds: Sequence[Mapping[str, np.ndarray]], threads: int | None = None) -> list[LayerError]:
    """SQNR of every compute layer's output in the INT8 model, most damaging layer (largest ``added_db``) first."""
    if not feeds:
        raise QuantError("layer sensitivity needs at least one input batch", "pass calibration images")
    fp32 = onnx.load(os.fspath(fp32_path))
    int8 = onnx.load(os.fspath(int8_path))
    produced = {o for n in int8.graph.node for o in n.output}
    graph_inputs = {i.name for i in fp32.graph.input}
    layers = [n for n in compute_layers(fp32) if n.output[0] in produced]
    activations = {n.input[0] for n in layers if n.input[0] in produced or n.input[0] in graph_inputs}
    names = sorted({n.output[0] for n in layers} | (activations - graph_inputs))
    ref_runs = _run_exposed(fp32, names, feeds, threads)
    int8_runs = _run_exposed(int8, names, feeds, threads)
    sqnr = {name: sqnr_db(np.concatenate([r[name].ravel() for r in ref_runs]),
                          np.concatenate([r[name].ravel() for r in int8_runs])) for name in names}
    result = []
    for node in layers:
        out_db = sqnr[node.output[0]]
        in_db = sqnr.get(node.input[0], float("inf"))  # the image input is exact in both
        added = (min(in_db, 99.0) - min(out_db, 99.0))
        result.append(LayerError(node.name, node.op_type, node.output[0], out_db, added))
    return sorted(result, key=lambda e: -e.added_db)


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The detection head's all-anchor part: nodes producing a tensor whose last dimension is the anchor count N of
    the ``B x (4+nc) x N`` output (the level Concat, DFL Reshape/Softmax/Conv, box decode, class Sigmoid).

    Read from shapes, not names, so it holds for any YOLOv8 export. On the trained detector, quantizing this part
    (one scale shared by box-distribution and class logits, a quantized DFL Softmax) cost 2.4 of the 3.7 mAP50-95
    points INT8 lost; Ultralytics and TensorRT users keep it in higher precision for the same reason.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    dims: dict[str, list[int | None]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    outputs = [dims.get(o.name, []) for o in model.graph.output]
    anchors = {shape[-1] for shape in outputs if len(shape) == 3 and shape[-1] and shape[-1] > 1}
    if not anchors:
        return []
    return [n.name for n in model.graph.node
            if any(len(dims.get(o, [])) >= 2 and dims[o][-1] in anchors for o in n.output)]


_ACTIVATIONS = frozenset({"Sigmoid", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Mul"})


def with_activations(model: onnx.ModelProto, nodes: Sequence[str]) -> list[str]:
    """``nodes`` plus the elementwise activation each compute layer feeds (SiLU = Sigmoid + Mul, ReLU, ...).

    TensorRT fuses Conv+activation into one layer, so keeping a layer in FP32 there keeps both. In the ONNX Runtime
    layout the activation is a node of its own; left INT8, its Q/DQ would quantize the float layer's output anyway.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in model.graph.node}
    result = list(dict.fromkeys(nodes))
    for name in nodes:
        node = by_name.get(name)
        if node is None or node.op_type not in COMPUTE_OPS:
            continue
        out = node.output[0]
        first = [c for c in consumers.get(out, []) if c.op_type in _ACTIVATIONS]
        if len(first) != len(consumers.get(out, [])):
            continue  # the output feeds something else too: not a fused activation
        follow = [c for c in first if c.op_type != "Mul"]
        gated = {o for c in follow for o in c.output}
        muls = [c for c in first if c.op_type == "Mul" and set(c.input) <= {out, *gated}]
        result.extend(c.name for c in [*follow, *muls] if c.name not in result)
    return result


@dataclass
class BudgetSearch:
    budget: float  # mAP50-95 points allowed below FP32
    excluded: list[str]
    delta: float  # measured mAP50-95 points below FP32 with those exclusions
    met: bool
    trials: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prefix_sizes(n: int) -> list[int]:
    """1, 2, 4, ... below ``n``, then ``n`` itself (all ranked layers): the prefixes the search tries."""
    sizes, k = [], 1
    while k < n:
        sizes.append(k)
        k *= 2
    return [*sizes, n] if n else []


def search_exclusions(ranked: Sequence[LayerError], measure_delta: Callable[[list[str]], float], budget: float,
                      baseline_delta: float, steps: Sequence[int] | None = None) -> BudgetSearch:
    """Keep the most damaging layers in float, a growing prefix of ``ranked`` at a time (1, 2, 4, ..., all), until
    the measured drop (``measure_delta(excluded) -> mAP points``) is within ``budget``; then bisect between the
    last failing and the first passing prefix for the fewest layers that meet it. Unmet even with every ranked
    layer in float: returns the best prefix tried, ``met`` False."""
    if budget < 0:
        raise QuantError(f"accuracy budget {budget} is negative", "pass mAP points >= 0, e.g. --accuracy-budget 0.5")
    trials: list[dict[str, Any]] = [{"excluded": 0, "delta": baseline_delta}]
    if baseline_delta <= budget:
        return BudgetSearch(budget, [], baseline_delta, True, trials)
    best: tuple[float, list[str]] = (baseline_delta, [])

    def trial(k: int) -> float:
        nonlocal best
        excluded = [e.node for e in ranked[:k]]
        delta = measure_delta(excluded)
        trials.append({"excluded": k, "delta": delta})
        if delta < best[0]:
            best = (delta, excluded)
        return delta

    failing = 0
    for k in steps if steps is not None else prefix_sizes(len(ranked)):
        if k > len(ranked):
            break
        delta = trial(k)
        if delta <= budget:
            passing = (k, delta)
            # measured deltas are noisy, not monotone: this finds a smallest passing prefix between the bounds
            while passing[0] - failing > 1:
                mid = (failing + passing[0]) // 2
                mid_delta = trial(mid)
                if mid_delta <= budget:
                    passing = (mid, mid_delta)
                else:
                    failing = mid
            return BudgetSearch(budget, [e.node for e in ranked[:passing[0]]], passing[1], True, trials)
        failing = k
    return BudgetSearch(budget, best[1], best[0], False, trials)


def write_mixed(model_path: Path, scales: Mapping[str, float], excluded: Sequence[str],
                sample: Sequence[Mapping[str, np.ndarray]], out_path: Path, weight_storage: str = "auto") -> Any:
    """The ONNX Runtime INT8 model with ``excluded`` layers kept in float and their neighbours still INT8
    (``nodes_to_exclude`` of ``vision.artifacts.qdq_ort.write_ort_qdq``: a float layer reads dequantized inputs)."""
    from vision.artifacts.qdq_ort import write_ort_qdq

    return write_ort_qdq(model_path, scales, sample, out_path, nodes_to_exclude=excluded,
                         weight_storage=weight_storage)


@dataclass
class MixedResult:
    """An accuracy-budgeted INT8 model: which layers stay FP32 and what that measured."""

    model: Path
    fp32_map50_95: float
    int8_map50_95: float  # all layers INT8
    mixed_map50_95: float
    search: BudgetSearch
    layer_errors: list[LayerError]

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "fp32_map50_95": self.fp32_map50_95, "int8_map50_95": self.int8_map50_95,
                "mixed_map50_95": self.mixed_map50_95, **self.search.to_dict(),
                "layer_errors": [e.to_dict() for e in self.layer_errors[:20]]}


def budgeted_mixed_precision(model_path: Path, int8_path: Path, scales: Mapping[str, float],
                             feeds: Sequence[Mapping[str, np.ndarray]], evaluate_map: Callable[[Path], float],
                             budget: float, out_path: Path, *, fp32_map: float | None = None,
                             int8_map: float | None = None, threads: int | None = None, keep_head: bool = True,
                             int8_keeps_head: bool = False, weight_storage: str = "auto") -> MixedResult:
    """The whole item: rank layers by added error, then keep a growing prefix in FP32 until
    ``FP32 mAP - mixed mAP <= budget`` (mAP50-95 points); writes the chosen model to ``out_path``.

    ``evaluate_map(model) -> mAP50-95`` is the user's accuracy measure (e.g. ``vision.evaluation.evaluate`` on ``--data``);
    ``int8_path`` is the INT8 model made from ``scales`` (all layers, or all but the head when
    ``int8_keeps_head``). With ``keep_head`` the head's all-anchor part (:func:`head_nodes`) stays float from the
    start (the field's lesson). ``vision-quant build --accuracy-budget`` and ``vision-quant compare`` both call this.
    """
    fp32 = evaluate_map(model_path) if fp32_map is None else fp32_map
    int8 = evaluate_map(int8_path) if int8_map is None else int8_map
    head = head_nodes(onnx.load(os.fspath(model_path))) if keep_head else []
    ranked = [e for e in layer_errors(model_path, int8_path, feeds, threads) if e.node not in set(head)]
    maps: dict[int, float] = {}

    onnx_model = onnx.load(os.fspath(model_path))

    def measure(excluded: list[str]) -> float:
        write_mixed(model_path, scales, [*head, *with_activations(onnx_model, excluded)], feeds[:1], out_path,
                    weight_storage)
        maps[len(excluded)] = evaluate_map(out_path)
        return 100.0 * (fp32 - maps[len(excluded)])

    if head and not int8_keeps_head:
        baseline = measure([])
    else:
        maps[0] = int8
        baseline = 100.0 * (fp32 - int8)
    search = search_exclusions(ranked, measure, budget, baseline)
    search.trials[0]["head_fp32"] = len(head)
    chosen = len(search.excluded)
    search.excluded = list(dict.fromkeys([*head, *with_activations(onnx_model, search.excluded)]))
    write_mixed(model_path, scales, search.excluded, feeds[:1], out_path, weight_storage)  # the chosen set
    return MixedResult(out_path, fp32, int8, maps.get(chosen, int8), search, ranked)
