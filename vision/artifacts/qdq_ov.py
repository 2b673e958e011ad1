"""The OpenVINO Q/DQ layout (``model.int8.ov.onnx``), written from the same calibration scales as the other two.

Why a layout of its own (measured with OpenVINO 2026.4.1 on AVX512-VNNI, the trained YOLOv8n, f32 hint):
``model.int8.onnx`` (modelopt's TensorRT layout) loses the class scores in OpenVINO (output SQNR against FP32 7 dB,
ONNX Runtime on the same file 20 dB). The placement is not the cause: a Conv-inputs-only layout with int8
activations (zero point 0) loses exactly as much. The cause is the *signed* activation Q/DQ inside the network (the
image input's alone is harmless): the same graph with the same scales stored as uint8 with zero point 128 (the
ONNX Runtime layout's convention; dequantized values are bit-identical) runs at 20-21 dB in OpenVINO, as in ONNX
Runtime, and at the same speed. Single Conv and Conv-SiLU-Conv models are exact either way, so it is a
whole-network low-precision transformation (LPT) effect, not a kernel's saturation. Probing intermediate tensors
(OpenVINO vs ONNX Runtime on the same signed model) places it at the first C2f block: every tensor up to its Concat
agrees (>60 dB), the Conv reading that Concat (``/model.2/cv2``) drops to 5 dB. That Concat joins the two Split
halves, each also read by another quantized Conv with its own scale, and the bottleneck's residual Add; OpenVINO's
handling of a signed Q/DQ behind such a Concat is what goes wrong.

OpenVINO's LPT runs a Conv in INT8 when its activation input comes through QuantizeLinear → DequantizeLinear and its
weight through a per-output-channel DequantizeLinear; it fuses the SiLU and the next Conv's quantization into the
Conv when that Conv+SiLU output has one quantization. So this writer quantizes:

- Conv activation inputs: uint8, one Q/DQ pair per tensor, shared by every op reading it. The top of the range is
  the cache's amax (127·scale). Its bottom is -amax (zero point 128, the cache's scale: TensorRT's symmetric range)
  unless the graph bounds the tensor from below: SiLU outputs never go below -0.278 (ReLU/Sigmoid: 0; MaxPool,
  Resize, Split, Concat and Add carry the bound), so their 256 levels span [-0.278, amax], about twice the
  resolution (``activation_quantization``). YOLOv8n, 500 val images, OpenVINO: -0.21 mAP50-95 points vs FP32
  instead of -0.56 with the symmetric range; the zero point does not change OpenVINO's speed;
- Conv weights: stored INT8, symmetric per output channel, scale = max|w_c|/127 (as TensorRT/modelopt quantize),
  DQ on axis 0;
- the inputs of Split, MaxPool, Resize (nearest) and Concat instead of their outputs: they only move or pick values,
  LPT moves the dequantization through them (its ConcatTransformation; "precision preserved" ops) and they run on
  uint8, so the Convs behind them read their outputs without a Q/DQ of their own;
- both inputs of a residual Add feeding a quantized Conv or Concat: LPT's AddTransformation then runs it on uint8.

One scale per group of tensors joined by Split/MaxPool/Resize/Concat (a C2f's cv1 output, its Split halves,
bottleneck outputs and Concat; SPPF's MaxPool chain; the neck's Resize + skip Concats): the largest calibrated scale
in the group, all from the cache. With a scale per tensor OpenVINO requantized every Concat input to the Concat's
scale in a kernel of its own, and a Conv whose output was read at two scales (a C2f output feeding the next Conv
and a skip Concat) wrote float and quantized it twice. With groups the compiled YOLOv8n has no requantizing
subgraph left, every Concat and residual Add runs on uint8 and 51 of 63 INT8 Convs write uint8 (the rest feed an
Add or the head's float decode): the same compiled graph as NNCF's own INT8 of that model (MIXED preset, head
ignored). Measured: a median 7–10 % faster than a scale per tensor (interleaved runs, loaded 2-core EPYC with
AVX512-VNNI); a group's smaller tensors get a coarser scale (up to 2.5x), yet with the symmetric range it lost no
accuracy (500 val images: -0.56 mAP50-95 points vs FP32, -0.60 with a scale per tensor).
Without the Split/MaxPool/Resize input quantization OpenVINO had run every C2f Split in its reference f32 kernel
(5 % of the INT8 model's time) and SPPF's MaxPools and the neck's Resize in f32.
The detection head's Split, whose outputs are decoded in float, is left alone.

Convs in ``nodes_to_exclude`` (the head, an accuracy budget) and Convs whose input has no calibrated scale stay
float.

CPUs without VNNI: OpenVINO's u8 x s8 kernels then add pairs of products in int16 (``vpmaddubsw``), which saturates
(255 * 127 * 2 > 32767). With oneDNN limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) the 8-bit layout's class-score
SQNR fell from 21 dB to 4 dB; 7-bit weights (±63, scale max|w_c|/63: 255 * 63 * 2 < 32767) kept 22 dB there, at
0.2 mAP50-95 points more loss on VNNI (-0.53 vs -0.32 on 150 val images). So ``weight_bits="auto"`` writes 8-bit
weights where this CPU has VNNI and 7-bit ones elsewhere; build for the CPU you deploy on, or pass it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quant_common.atomic import staged_file
from quant_common.errors import QuantError
from vision.artifacts.qdq_ort import fold_constant_nodes
from vision.artifacts.qdq_verify import QdqSummary, check_scales, count_weight_granularity
from vision.artifacts.qdq_weights import cpu_has_vnni
from vision.model import read_onnx

WeightBits = Literal["auto", "8", "7"]
_MIN_SCALE = float(np.finfo(np.float32).tiny)
ACTIVATION_ZERO_POINT = 128  # uint8 storage: OpenVINO misreads int8 activations (see above)
SILU_MIN = -0.2784645  # min over x of x * sigmoid(x), at x = -1.2785: no SiLU output is lower, whatever the data
_QUANTIZED_OPS = frozenset({"Conv"})  # OpenVINO's integer kernels: Conv (with per-channel weights)
# ops quantized at their inputs so that LPT runs them on uint8 (see the module docstring): value-preserving ones,
# whose outputs stay quantized, and residual Adds, whose output gets a Q/DQ of its own where it is read
PASS_THROUGH_OPS = frozenset({"Split", "MaxPool", "Resize", "Concat", "Add"})
_ELTWISE_OPS = frozenset({"Add"})


def weight_scales(weight: np.ndarray, qmax: int = 127) -> np.ndarray:
    """Symmetric per-output-channel scales max|w_c|/qmax (an all-zero channel gets the smallest normal float)."""
    amax = np.abs(weight.reshape(weight.shape[0], -1)).max(axis=1)
    return np.maximum(amax / qmax, _MIN_SCALE).astype(np.float32)


def quantize_weight(weight: np.ndarray, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``(int8 values, scales)``: round-to-nearest-even, clipped to ±(2^(bits-1) - 1) (TensorRT's symmetric range
    for 8 bits; 7 bits keeps u8 x s8 pair sums below the int16 limit of CPUs without VNNI)."""
    qmax = 2 ** (bits - 1) - 1
    scales = weight_scales(weight, qmax)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    q = np.clip(np.rint(weight / scales.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scales


def resolve_weight_bits(weight_bits: WeightBits) -> int:
    """``auto``: 8 where the CPU has VNNI (exact int32 accumulation), else 7 (see the module docstring)."""
    if weight_bits == "auto":
        return 8 if cpu_has_vnni() else 7
    return int(weight_bits)


def write_openvino_qdq(model: onnx.ModelProto | str | os.PathLike[str], scales: Mapping[str, float], out_path: Path,
                       *, nodes_to_exclude: Sequence[str] = (), weight_bits: WeightBits = "auto",
                       label: str | None = None, pass_through: Collection[str] = PASS_THROUGH_OPS) -> QdqSummary:
    """Write ``out_path`` (atomically): the FP32 ``model`` (loaded, left unmodified, or a file; ``label`` names it in
    messages) with INT8 Q/DQ on Conv inputs and weights and on the inputs of the ``pass_through`` ops.

    ``weight_bits`` 8 or 7 (values within ±63, for CPUs without VNNI); ``auto`` picks by this CPU. ``pass_through``:
    the op types quantized at their inputs and run on uint8 (empty: Q/DQ on Conv inputs only)."""
    bits = resolve_weight_bits(weight_bits)
    if isinstance(model, onnx.ModelProto):
        original, name = model, label or "the model"
    else:
        original, name = read_onnx(model), label or Path(model).name
    names = {n.name for n in original.graph.node}
    unknown = sorted(set(nodes_to_exclude) - names)
    if unknown:
        raise QuantError(f"node(s) to keep in float not in {name}: {', '.join(unknown[:3])}",
                         "pick node names from the model graph (e.g. from build.json's mixed_precision)")
    model = fold_constant_nodes(original)
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        raise QuantError(f"{name} uses ONNX opset < 13, which has no per-channel DequantizeLinear",
                         "re-export the model with opset >= 13")
    inits = {i.name: i for i in model.graph.initializer}
    init_names = set(inits)
    excluded = set(nodes_to_exclude)
    summary = QdqSummary(path=out_path, layout="openvino", excluded_nodes=sorted(excluded),
                         weight_storage=f"int{bits}")

    dequantized: dict[str, str] = {}  # activation tensor -> its DQ output
    carried: set[str] = set()  # outputs of pass-through ops: already dequantized uint8 values
    leads_to_int8 = _leads_to_int8_conv(model, excluded, pass_through, init_names)

    def passes(node: onnx.NodeProto) -> bool:
        return node.op_type in pass_through and node.op_type not in _ELTWISE_OPS and node.name not in excluded \
            and bool(node.input) and leads_to_int8(node)

    groups = _scale_groups(model, passes, init_names)
    effective = {**scales, **_largest_in_group(groups, scales)}
    bounds = _lower_bounds(model)
    written: dict[str, float] = {}  # tensor -> the scale its Q/DQ got

    def dequantize(x: str) -> str:
        if x not in dequantized:
            scale, zero_point = activation_quantization(effective[x], [bounds.get(m) for m in groups.get(x, [x])])
            dequantized[x] = _insert_activation_qdq(model, new_nodes, x, scale, zero_point)
            written[x] = scale
        return dequantized[x]

    def dequantize_inputs(node: onnx.NodeProto, data: list[str]) -> None:
        """Route the node's activation inputs not already carried on uint8 through their Q/DQ."""
        for index, x in enumerate(node.input):
            if x in data and x not in carried:
                node.input[index] = dequantize(x)

    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        data = _data_inputs(node, init_names)
        if passes(node) and data and all(x in carried or x in effective for x in data):
            dequantize_inputs(node, data)
            carried.update(node.output)
        elif node.op_type in _QUANTIZED_OPS and node.name not in excluded and len(node.input) >= 2 \
                and node.input[1] in inits and node.input[0] not in inits and node.input[0] in carried:
            node.input[1] = _insert_weight_dq(model, new_nodes, inits[node.input[1]], node.name, bits)
        elif node.op_type in _QUANTIZED_OPS and node.name not in excluded and len(node.input) >= 2 \
                and node.input[0] in effective and node.input[1] in inits and node.input[0] not in inits:
            node.input[0] = dequantize(node.input[0])
            node.input[1] = _insert_weight_dq(model, new_nodes, inits[node.input[1]], node.name, bits)
        elif node.op_type in _ELTWISE_OPS and node.op_type in pass_through and node.name not in excluded \
                and len(data) == 2 and leads_to_int8(node) and all(x in carried or x in effective for x in data):
            dequantize_inputs(node, data)  # both inputs on uint8: LPT runs the Add in low precision
        new_nodes.append(node)
    if not dequantized:
        raise QuantError(f"no Conv of {name} could be quantized (no calibrated input scale)",
                         "check that the calibration cache belongs to this model")
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unused_initializers(model)  # the float weights now stored as INT8
    check_scales(model, written, summary, zero_point=None)
    count_weight_granularity(model, summary)
    onnx.checker.check_model(model)
    with staged_file(out_path) as staged:
        onnx.save(model, str(staged))
    return summary


def _leads_to_int8_conv(model: onnx.ModelProto, excluded: set[str], pass_through: Collection[str],
                        initializers: set[str]) -> Callable[[onnx.NodeProto], bool]:
    """Whether a node's output reaches a Conv that will run in INT8 through pass-through ops and Concats only (the
    detection head's Split, whose outputs are decoded in float, does not)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches(node: onnx.NodeProto, depth: int = 0) -> bool:
        for user in (u for out in node.output for u in consumers.get(out, [])):
            if user.name in excluded:
                continue
            if user.op_type in _QUANTIZED_OPS and len(user.input) >= 2 and user.input[1] in initializers:
                return True
            if (user.op_type in pass_through or user.op_type in _ELTWISE_OPS or user.op_type == "Concat") \
                    and depth < 8 and reaches(user, depth + 1):
                return True
        return False

    return reaches


def _data_inputs(node: onnx.NodeProto, initializers: set[str]) -> list[str]:
    """The activation inputs a pass-through op carries (all of a Concat's, the first of the others)."""
    names = list(node.input) if node.op_type in ("Concat", *_ELTWISE_OPS) else list(node.input[:1])
    return [x for x in names if x and x not in initializers]


def _scale_groups(model: onnx.ModelProto, passes: Callable[[onnx.NodeProto], bool],
                  initializers: set[str]) -> dict[str, list[str]]:
    """Tensor -> the tensors sharing its quantization: those joined by pass-through ops (a Concat's inputs and output,
    a Split's input and halves, a MaxPool's or Resize's input and output)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for node in model.graph.node:
        if passes(node):
            for x in [*_data_inputs(node, initializers), *node.output]:
                parent[find(x)] = find(node.output[0])
    members: dict[str, list[str]] = {}
    for x in parent:
        members.setdefault(find(x), []).append(x)
    return {x: members[find(x)] for x in parent}


def _largest_in_group(groups: Mapping[str, list[str]], scales: Mapping[str, float]) -> dict[str, float]:
    """Each grouped tensor's scale: the largest calibrated scale in its group (its amax covers every member)."""
    unified: dict[str, float] = {}
    for x, members in groups.items():
        known = [scales[m] for m in members if m in scales]
        if known:
            unified[x] = max(known)
    return unified


def _lower_bounds(model: onnx.ModelProto) -> dict[str, float]:
    """Tensors with a lower bound that holds for any input, from the graph alone: SiLU (Mul(x, Sigmoid(x))) outputs,
    ReLU and Sigmoid outputs, and what MaxPool/Resize/Split/Concat/Add make of them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    bounds: dict[str, float] = {}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        found: float | None = None
        ins = list(node.input)
        if node.op_type == "Mul" and len(ins) == 2:
            for x, gate in (ins, ins[::-1]):
                source = producer.get(gate)
                if source is not None and source.op_type == "Sigmoid" and source.input[0] == x:
                    found = SILU_MIN
        elif node.op_type in ("Relu", "Sigmoid"):
            found = 0.0
        elif node.op_type in ("MaxPool", "Resize", "Split", "Identity") and ins and ins[0] in bounds:
            found = bounds[ins[0]]
        elif node.op_type in ("Concat", "Add") and ins and all(x in bounds for x in ins):
            found = min(bounds[x] for x in ins) if node.op_type == "Concat" else sum(bounds[x] for x in ins)
        if found is not None:
            bounds.update({out: found for out in node.output})
    return bounds


def activation_quantization(scale: float, lower_bounds: Sequence[float | None]) -> tuple[float, int]:
    """``(scale, uint8 zero point)`` for a tensor whose calibrated range is ±127·``scale``.

    Where every tensor sharing the quantization has a lower bound (``lower_bounds``, e.g. SiLU's -0.278) the 256
    levels span [bound, amax] instead of [-amax, amax]: about twice the resolution for SiLU outputs, which the
    symmetric range spends half of on negatives they never reach. Otherwise the cache's scale with zero point 128."""
    amax = 127.0 * scale
    if not lower_bounds or any(b is None for b in lower_bounds):
        return scale, ACTIVATION_ZERO_POINT
    low = max(min(b for b in lower_bounds if b is not None), -amax)
    if low > 0:  # e.g. Sigmoid outputs: keep zero representable
        low = 0.0
    asymmetric = max((amax - low) / 255.0, _MIN_SCALE)
    return asymmetric, int(np.clip(round(-low / asymmetric), 0, 255))


def _insert_activation_qdq(model: onnx.ModelProto, nodes: list[onnx.NodeProto], tensor: str, scale: float,
                           zero_point: int) -> str:
    base = tensor.strip("/").replace("/", "_")
    scale_name, zp_name = f"{base}_ovq_scale", f"{base}_ovq_zero_point"
    model.graph.initializer.extend([numpy_helper.from_array(np.array(scale, dtype=np.float32), scale_name),
                                    numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), zp_name)])
    quantized, dequantized = f"{base}_ovq", f"{base}_ovdq"
    nodes.append(helper.make_node("QuantizeLinear", [tensor, scale_name, zp_name], [quantized], name=f"{base}_OvQ"))
    nodes.append(helper.make_node("DequantizeLinear", [quantized, scale_name, zp_name], [dequantized],
                                  name=f"{base}_OvDQ"))
    return dequantized


def _insert_weight_dq(model: onnx.ModelProto, nodes: list[onnx.NodeProto], weight: onnx.TensorProto,
                      user: str, bits: int) -> str:
    values, scales = quantize_weight(numpy_helper.to_array(weight).astype(np.float32), bits)
    base = f"{user.strip('/').replace('/', '_')}_w"
    model.graph.initializer.extend([
        numpy_helper.from_array(values, f"{base}_int8"),
        numpy_helper.from_array(scales, f"{base}_scale"),
        numpy_helper.from_array(np.zeros(scales.shape, dtype=np.int8), f"{base}_zero_point")])
    nodes.append(helper.make_node("DequantizeLinear", [f"{base}_int8", f"{base}_scale", f"{base}_zero_point"],
                                  [f"{base}_dq"], name=f"{base}_DQ", axis=0))
    return f"{base}_dq"


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
