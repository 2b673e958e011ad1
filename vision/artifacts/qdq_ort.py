"""``model.int8.ort.onnx``: the ONNX Runtime layout of the Q/DQ model.

onnxruntime.quantization's QDQ placement, which ORT fuses into QLinearConv & co. Activations are QUInt8 with zero
point 128 and our symmetric scale amax/127, so they quantize every tensor exactly as the TensorRT layout does
(``vision.artifacts.qdq_trt``). Measured on YOLOv8n 640, batch 1: 22 ms against 50-56 ms in FP32, where the TensorRT
layout runs slower than FP32 under ORT (72 ms); with symmetric QInt8 activations (zero point 0) instead, 84 ms.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from quant_common.atomic import staged_file
from quant_common.errors import QuantError
from vision.artifacts.qdq_verify import QdqSummary, check_scales, count_weight_granularity, quiet_third_party
from vision.artifacts.qdq_weights import WeightStorage, resolve_weight_storage, store_weights_uint8
from vision.graph import post_processing_nodes
from vision.model import read_onnx

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}


def fold_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where ``Constant`` nodes and ``Identity`` of an initializer become initializers.

    torch.onnx exports identical weights once and re-shares them through Identity nodes (common for the all-zero
    biases of an untrained YOLOv8). onnxruntime.quantization then takes such a bias for an activation, gives it a
    u8 Q/DQ pair, and ORT can no longer fuse that Conv into QLinearConv.
    """
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    values = {i.name: i for i in folded.graph.initializer}
    keep = []
    for node in folded.graph.node:
        tensor = None
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in values:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(values[node.input[0]])
        if tensor is None:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        folded.graph.initializer.append(tensor)
        values[tensor.name] = tensor
    del folded.graph.node[:]
    folded.graph.node.extend(keep)
    return folded


def ort_op_types() -> list[str]:
    """The op types onnxruntime.quantization quantizes by default (QDQ plus QOperator registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))


def float_activations(model: onnx.ModelProto) -> set[str]:
    """Names of float activation tensors (graph inputs and node outputs with a known float type, or unknown)."""
    known: dict[str, int] = {}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        known[vi.name] = vi.type.tensor_type.elem_type
    initializers = {i.name for i in model.graph.initializer}
    names = {i.name for i in model.graph.input if i.name not in initializers}
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.update(o for o in node.output if o)
    return {n for n in names if known.get(n, onnx.TensorProto.FLOAT) in _FLOAT}


def ort_quantized_tensors(model: onnx.ModelProto) -> list[str]:
    """Activations the ONNX Runtime layout may quantize: float inputs/outputs of quantizable, non-tail nodes.

    Collect statistics for all of them so that every one gets our scale (none falls back to ORT's own range).
    """
    model = fold_constant_nodes(model)
    ops, tail = set(ort_op_types()), set(post_processing_nodes(model))
    activations = float_activations(model)
    wanted: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ops and node.name not in tail:
            wanted.update(t for t in list(node.input) + list(node.output) if t in activations)
    return sorted(wanted)


class _FeedsReader:
    """onnxruntime.quantization's CalibrationDataReader over a fixed list of feed dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        feeds = next(self._it, None)
        return dict(feeds) if feeds is not None else None

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def ort_overrides(model: onnx.ModelProto, scales: Mapping[str, float]) -> dict[str, list[dict[str, np.ndarray]]]:
    """TensorQuantOverrides giving every tensor ORT quantizes our scale and zero point 128 (u8 activations)."""
    return {name: [{"scale": np.array(scales[name], dtype=np.float32), "zero_point": np.array(128, dtype=np.uint8)}]
            for name in ort_quantized_tensors(model) if name in scales}


def write_ort_qdq(model: onnx.ModelProto | str | os.PathLike[str], scales: Mapping[str, float],
                  sample_feeds: Sequence[Mapping[str, np.ndarray]], out_path: Path, *,
                  nodes_to_exclude: Sequence[str] = (), per_channel: bool = True,
                  weight_storage: WeightStorage = "auto", label: str | None = None) -> QdqSummary:
    """``model.int8.ort.onnx``: activations QUInt8 (zp 128, our scale), weights per output channel.

    ``model``: the FP32 model, loaded (left unmodified) or a file; ``label`` names it in messages (default: the
    file name). Weights are symmetric INT8 with scale max|w_c|/127 (as TensorRT/modelopt quantize them);
    ``weight_storage`` ``uint8`` stores them as q+128 with zero point 128, which ORT computes exactly on CPUs
    without VNNI (``vision.artifacts.qdq_weights``); ``auto`` picks by this CPU. ``nodes_to_exclude`` stay float
    while their neighbours stay quantized (their inputs are dequantized, their outputs quantized again for the next
    INT8 layer). ``sample_feeds`` only satisfy quantize_static's calibration pass, whose ranges our overrides
    replace; one batch is enough.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if isinstance(model, onnx.ModelProto):
        original, name = model, label or "the model"
    else:
        original, name = read_onnx(model), label or Path(model).name
    names = {n.name for n in original.graph.node}
    folded = fold_constant_nodes(original)
    unknown = sorted(set(nodes_to_exclude) - names)
    if unknown:
        raise QuantError(f"node(s) to keep in float not in {name}: {', '.join(unknown[:3])}",
                         "pick node names from the model graph (e.g. from build.json's mixed_precision)")
    overrides = ort_overrides(folded, scales)
    missing = [t for t in ort_quantized_tensors(folded) if t not in scales]
    tail = post_processing_nodes(folded)
    # A node whose activation has no scale of ours stays float rather than taking ORT's range from one batch.
    excluded = set(tail) | set(nodes_to_exclude) | {
        n.name for n in folded.graph.node if any(t in missing for t in list(n.input) + list(n.output))}
    summary = QdqSummary(path=out_path, layout="onnxruntime")
    storage = resolve_weight_storage(weight_storage)
    with tempfile.TemporaryDirectory(prefix="vq-ortq-") as tmp, quiet_third_party():
        tmp_out, tmp_in = Path(tmp) / "model.int8.ort.onnx", Path(tmp) / "model.folded.onnx"
        onnx.save(folded, str(tmp_in))
        try:
            quantize_static(str(tmp_in), str(tmp_out), _FeedsReader(sample_feeds), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=sorted(excluded),
                            extra_options={"TensorQuantOverrides": overrides, "ActivationSymmetric": False,
                                           "WeightSymmetric": True,
                                           # output features: axis 1 of a MatMul weight (K x N)
                                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
        except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises bare exceptions
            raise QuantError(f"onnxruntime.quantization could not quantize {name}: "
                             f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}",
                             "check the model runs in ONNX Runtime; try --simplify") from exc
        quantized = onnx.load(str(tmp_out))
        check_scales(quantized, scales, summary, zero_point=128)
        count_weight_granularity(quantized, summary)
        summary.weight_storage = storage
        summary.excluded_nodes = sorted(set(nodes_to_exclude))
        if storage == "uint8" and store_weights_uint8(quantized):
            onnx.save(quantized, str(tmp_out))
        with staged_file(out_path) as staged:
            shutil.copyfile(tmp_out, staged)
    return summary
