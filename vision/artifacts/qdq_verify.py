"""What both Q/DQ writers share: the summary of a written model and its verification. Every activation Q node must
carry exactly our scale (float32 bit-exact), so both layouts quantize every shared tensor identically.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from quant_common.errors import QuantError


@dataclass
class QdqSummary:
    """What a writer produced and how it was checked."""

    path: Path
    layout: str
    activation_tensors: int = 0  # activations carrying a Q node
    matched_scales: int = 0  # of those, with exactly our scale
    per_channel_weights: int = 0
    per_tensor_weights: int = 0
    weight_storage: str = "int8"
    excluded_nodes: list[str] = field(default_factory=list)  # kept in float on request
    mismatched: list[str] = field(default_factory=list)



def activation_q_scales(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """``{tensor: (scale, zero_point)}`` of every QuantizeLinear applied to an activation (not a weight)."""
    inits = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in constants:
            return numpy_helper.to_array(constants[name].attribute[0].t)
        return None

    found: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[0] not in constants:
            scale = value(node.input[1])
            if scale is not None:
                zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                found[node.input[0]] = (scale, zp)
    return found


# ORT gives the outputs of these ops their input's scale (their kernels cannot rescale), as TensorRT does.
_SCALE_PRESERVING = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice",
                               "MaxPool", "Resize", "Pad", "Gather", "GatherElements", "TopK", "AveragePool",
                               "Identity", "Cast"})  # Cast: the FP16 high-precision model casts before its Q


def check_scales(model: onnx.ModelProto, scales: Mapping[str, float], summary: QdqSummary,
                  zero_point: int | None) -> None:
    producer = {out: node for node in model.graph.node for out in node.output}
    dq_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    q_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}

    def allowed(tensor: str) -> set[np.float32]:
        """Our scale for ``tensor`` and, through scale-preserving ops, for the tensors it was copied from."""
        found: set[np.float32] = set()
        for _ in range(64):
            if tensor in scales:
                found.add(np.float32(scales[tensor]))
            node = producer.get(tensor)
            if node is None or node.op_type not in _SCALE_PRESERVING or not node.input:
                break
            tensor = node.input[0]
            tensor = q_source.get(dq_source.get(tensor, ""), dq_source.get(tensor, tensor))
        return found

    for tensor, (scale, zp) in activation_q_scales(model).items():
        summary.activation_tensors += 1
        wanted = allowed(tensor)
        if scale.dtype == np.float16:  # an FP16 model's Q/DQ scales are our scales rounded to FP16
            wanted = {np.float32(np.float16(s)) for s in wanted}
        ok = scale.size == 1 and np.float32(scale.reshape(-1)[0]) in wanted
        if ok and zero_point is not None:
            ok = zp is not None and int(zp.reshape(-1)[0]) == zero_point
        if ok:
            summary.matched_scales += 1
        else:
            summary.mismatched.append(tensor)
    if summary.mismatched:
        raise QuantError(f"{summary.layout} Q/DQ model does not use the calibrated scale for "
                         f"{len(summary.mismatched)} tensor(s), e.g. '{summary.mismatched[0]}'",
                         "report this model to the vision-quant maintainers (rerun with --force to recalibrate)")


def count_weight_granularity(model: onnx.ModelProto, summary: QdqSummary) -> None:
    """Count weights quantized per channel vs per tensor: either stored INT8 → DQ (ORT) or FP32 → Q → DQ (modelopt)."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        source = inits.get(node.input[0]) if node.op_type in ("QuantizeLinear", "DequantizeLinear") else None
        is_weight = source is not None and len(source.dims) >= 2 and (
            node.op_type == "QuantizeLinear" or source.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
        if not is_weight:
            continue
        scale = inits.get(node.input[1])
        if scale is not None and numpy_helper.to_array(scale).size > 1:
            summary.per_channel_weights += 1
        else:
            summary.per_tensor_weights += 1


@contextlib.contextmanager
def quiet_third_party() -> Iterator[None]:
    """modelopt and onnxruntime.quantization log and print a lot; keep stdout clean for ``--json``."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logging.disable(previous)
