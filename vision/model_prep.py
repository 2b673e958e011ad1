"""Turn the model a user exported into the one we calibrate and quantize, and say what was changed.

Ultralytics exports that TensorRT users make break the Q/DQ writers as they are:
- ``half=True`` (FP16 weights and I/O): statistics and scales are FP32, and onnxruntime.quantization writes FP16
  scales onto a DequantizeLinear whose other inputs it keeps FP32. We calibrate an FP32 twin (the same graph, tensor
  names and values widened to float32), write both Q/DQ layouts from it and put casts at the I/O so each Q/DQ model
  takes and returns what the user's model does.
- ``opset`` < 13: per-axis QuantizeLinear/DequantizeLinear (per-channel weights and their int32 biases) exist from
  opset 13. onnx's version converter lifts the model to opset 13; nothing else changes.

The prepared model is written next to the build's artifacts and is what the calibration cache and both Q/DQ models
refer to (``build.json`` → ``model.prepared``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from quant_common.errors import QuantError
from vision.model import ModelInfo, inspect_model

# Per-axis Q/DQ (per-channel weights, their int32 biases) needs opset 13.
MIN_QDQ_OPSET = 13
_F16, _F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
# Attributes naming an output element type: widened with the tensors.
_DTYPE_ATTRS = {("Cast", "to"), ("RandomNormal", "dtype"), ("RandomUniform", "dtype"), ("EyeLike", "dtype"),
                ("RandomNormalLike", "dtype"), ("RandomUniformLike", "dtype"), ("CastLike", "to")}


@dataclass
class PreparedModel:
    """The model the INT8 stages work on (``info.path`` is a file: the modelopt writer reads it) and its story."""

    info: ModelInfo
    model: onnx.ModelProto
    io_dtype: str  # the user's model's input/output float type: the Q/DQ models take and return this
    changes: list[str] = field(default_factory=list)
    half: bool = False  # the user's model computes in FP16 (FP16 weights; I/O FP16 or FP32 with casts inside)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def manifest(self, original: ModelInfo) -> dict[str, Any]:
        return {"changes": self.changes, "path": self.info.path.name if self.changed else None,
                "sha256": self.info.sha256, "opset": self.info.opset, "original_opset": original.opset,
                "io_dtype": self.io_dtype, "calibration_dtype": self.info.input_dtype, "half": self.half}


def widen_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` computing in float32: every float16 initializer, Constant, declared type and dtype
    attribute becomes float32. Tensor and node names are kept, so scales calibrated on it fit the FP16 model."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)

    def widen_tensor(tensor: onnx.TensorProto) -> None:
        if tensor.data_type == _F16:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))

    def widen_graph(graph: onnx.GraphProto) -> None:
        for init in graph.initializer:
            widen_tensor(init)
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type == _F16:
                info.type.tensor_type.elem_type = _F32
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    widen_tensor(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    widen_graph(attr.g)
                elif (node.op_type, attr.name) in _DTYPE_ATTRS and attr.i == _F16:
                    attr.i = _F32

    widen_graph(wide.graph)
    return wide


def is_fp16(model: onnx.ModelProto) -> bool:
    """FP16 I/O or any FP16 weight: the model computes (at least partly) in half precision."""
    io = [*model.graph.input, *model.graph.output]
    return any(i.type.tensor_type.elem_type == _F16 for i in io) or any(
        init.data_type == _F16 for init in model.graph.initializer)


def raise_opset(model: onnx.ModelProto, target: int, label: str) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises RuntimeError/ValidationError variants
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise QuantError(f"onnx's version converter could not lift {label} to opset {target} ({first})",
                         f"re-export the model with opset {target} or newer (e.g. yolo export opset=17)") from exc
    return converted


def prepare_model(info: ModelInfo, model: onnx.ModelProto, staging: Path) -> PreparedModel:
    """``model`` as it is when nothing needs changing, else the changed copy saved to ``staging``."""
    io_dtype = "float16" if any(i.type.tensor_type.elem_type == _F16
                                for i in [*model.graph.input, *model.graph.output]) else "float32"
    changes: list[str] = []
    prepared = model
    if info.reordered:
        changes.append("nodes put in topological order (ONNX Runtime accepts the file's order, onnx's checker not)")
    if info.opset < MIN_QDQ_OPSET:
        prepared = raise_opset(prepared, MIN_QDQ_OPSET, info.path.name)
        changes.append(f"opset {info.opset} -> {MIN_QDQ_OPSET} (onnx version converter: per-axis Q/DQ needs "
                       f"opset {MIN_QDQ_OPSET})")
    half = is_fp16(prepared)
    if half:
        prepared = widen_fp16(prepared)
        changes.append(f"float16 -> float32 for calibration and Q/DQ (I/O stays {io_dtype})")
    if not changes:
        return PreparedModel(info, model, io_dtype)
    path = staging / "model.prepared.onnx"
    onnx.save(prepared, str(path))
    return PreparedModel(inspect_model(prepared, path), prepared, io_dtype, changes, half)


def cast_io(model: onnx.ModelProto, io_dtype: str) -> onnx.ModelProto:
    """``model`` (float32 I/O) taking and returning ``io_dtype``: a Cast after each float input and before each
    float output; inside, tensors keep their names. The identity when ``io_dtype`` is float32."""
    if io_dtype != "float16":
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    renames: dict[str, str] = {}
    casts_in, casts_out = [], []
    for value in graph.input:
        if value.type.tensor_type.elem_type == _F32:
            inner = f"{value.name}_float32"
            renames[value.name] = inner
            casts_in.append(onnx.helper.make_node("Cast", [value.name], [inner], to=_F32, name=f"{inner}_Cast"))
            value.type.tensor_type.elem_type = _F16
    for value in graph.output:
        if value.type.tensor_type.elem_type == _F32:
            inner = f"{value.name}_float32"
            renames[value.name] = inner
            casts_out.append(onnx.helper.make_node("Cast", [inner], [value.name], to=_F16, name=f"{inner}_Cast"))
            value.type.tensor_type.elem_type = _F16
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    for value in graph.value_info:
        value.name = renames.get(value.name, value.name)
    _fold_round_trips(out)
    return out


def _fold_round_trips(model: onnx.ModelProto) -> None:
    """Cast(fp16 -> fp32) -> Cast(fp32 -> fp16) is exactly the identity: modelopt's FP16 layout casts its FP32 I/O
    to FP16 right where ``cast_io`` cast FP16 to FP32. Each such pair becomes one Identity (in place)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without types nothing is folded
        return
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    nodes = list(model.graph.node)
    consumers: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    producer = {out: node for node in nodes for out in node.output}
    graph_outputs = {o.name for o in model.graph.output}

    def cast_to(node: onnx.NodeProto | None) -> int | None:
        if node is None or node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    replaced: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for node in nodes:
        first = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == _F16 and first is not None and cast_to(first) == _F32 and id(first) not in dropped
                and consumers.get(first.output[0]) == 1 and first.output[0] not in graph_outputs
                and types.get(first.input[0]) == _F16):
            replaced[id(node)] = onnx.helper.make_node("Identity", [first.input[0]], [node.output[0]],
                                                       name=f"{node.name}_folded")
            dropped.add(id(first))
    kept = [replaced.get(id(n), n) for n in nodes if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
