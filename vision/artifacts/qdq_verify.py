"""What both Q/DQ writers share: the summary of a written model and its verification. Every activation Q node must
carry exactly our scale (float32 bit-exact), so both layouts quantize every shared tensor identically.
"""

from __future__ import annotations

import contextlib
import logging
import re
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
    io_dtype: str = "float32"  # what the model takes and returns
    high_precision_dtype: str = "float32"  # the type of its unquantized tensors
    fp16_casts_added: list[str] = field(default_factory=list)  # nodes whose FP32 inputs were cast to FP16


def check_loads_in_onnxruntime(path: Path, layout: str) -> None:
    """A Q/DQ model we wrote must load in ONNX Runtime; if it does not, that is our bug, and the message names the
    node ONNX Runtime rejected (never the user's file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Loading (graph checks, kernel lookup) is the test; no optimisation needed
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several private exception types
        text = str(exc).strip()
        node = re.search(r"node \(([^)]*)\)|[Nn]ode[: ]+'?([^'\s,]+)", text)
        where = f" at node '{next(g for g in node.groups() if g)}'" if node else ""
        first = text.splitlines()[0][:300] if text else exc.__class__.__name__
        raise QuantError(f"vision-quant wrote a {layout} Q/DQ model ({path.name}) that ONNX Runtime rejects{where}: "
                         f"{first}",
                         "this is a vision-quant bug, not a problem with your model: please report it with "
                         "build.json and the model") from exc



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
                               "Identity", "Cast"})  # Cast: modelopt's FP16 layout casts the FP32 I/O


def check_scales(model: onnx.ModelProto, scales: Mapping[str, float], summary: QdqSummary,
                  zero_point: int | None) -> None:
    producer = {out: node for node in model.graph.node for out in node.output}
    dq_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    q_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}

    def allowed(tensor: str, dtype: np.dtype) -> set[np.floating]:
        """Our scale for ``tensor`` (in the scale's stored type: an FP16 layout stores FP16 scales) and, through
        scale-preserving ops, for the tensors it was copied from."""
        found: set[np.floating] = set()
        for _ in range(64):
            if tensor in scales:
                value = dtype.type(scales[tensor])
                if value == 0 and scales[tensor] > 0:
                    # too small for the type (FP16 scales of near-silent tensors, e.g. in untrained models):
                    # modelopt stores the smallest positive value instead of 0
                    value = np.nextafter(dtype.type(0), dtype.type(1))
                found.add(value)
            node = producer.get(tensor)
            if node is None or node.op_type not in _SCALE_PRESERVING or not node.input:
                break
            tensor = node.input[0]
            tensor = q_source.get(dq_source.get(tensor, ""), dq_source.get(tensor, tensor))
        return found

    for tensor, (scale, zp) in activation_q_scales(model).items():
        summary.activation_tensors += 1
        ok = scale.size == 1 and scale.reshape(-1)[0] in allowed(tensor, scale.dtype)
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
