"""``model.fp16.onnx``: the FP16 model a strongly typed TensorRT network builds FP16 from (TensorRT 11 has no FP16
builder flag). modelopt's autocast converts every float op it can to FP16 and keeps the graph inputs and outputs in
FP32 (``keep_io_types``), so callers feed and read the same tensors as the FP32 model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from quant_common.atomic import staged_file
from quant_common.errors import QuantError, require
from vision.model import carry_metadata
from vision.model_prep import widen_fp16


def write_fp16_onnx(model_path: Path, out_path: Path) -> Path:
    require("modelopt.onnx.autocast", purpose="the FP16 ONNX model", install="pip install nvidia-modelopt")
    from modelopt.onnx.autocast.convert import convert_to_f16

    logging.getLogger("modelopt").setLevel(logging.ERROR)
    source = onnx.load(str(model_path))
    try:
        converted = convert_to_f16(source, low_precision_type="fp16", keep_io_types=True)
    except Exception as exc:  # noqa: BLE001 - modelopt raises assorted errors
        raise QuantError(f"modelopt could not convert {model_path.name} to FP16: "
                         f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}",
                         "check the model runs in ONNX Runtime, or use --precision fp32/int8") from exc
    carry_metadata(source, converted)
    with staged_file(out_path) as staged:
        onnx.save(converted, str(staged))
    return out_path


def has_fp16_qdq(model: onnx.ModelProto) -> bool:
    """A Q/DQ model whose float parts are FP16 (modelopt's ``high_precision_dtype=fp16``: FP16 dequantize scales)."""
    fp16 = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    return any(node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in fp16
               for node in model.graph.node)


def emulate_fp16_storage(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` computing in FP32 with every FP16 tensor rounded to FP16 where it is written: what an FP16 engine
    stores between layers, without ONNX Runtime's CPU FP16 kernels (which are not TensorRT's: on the bundled
    detector's FP16 TensorRT-layout model they cost ~20 mAP50-95 points the model itself does not lose).

    The widened graph (``vision.model_prep.widen_fp16``) gets a Cast to FP16 and back after each node output that
    was FP16. Arithmetic inside a layer stays FP32, as in TensorRT's FP16 kernels that accumulate in FP32."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    half = {vi.name for vi in [*graph.value_info, *graph.output]
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    outputs = {o.name for o in model.graph.output}
    wide = widen_fp16(model)
    nodes: list[onnx.NodeProto] = []
    for node in wide.graph.node:
        rounded = [name for name in node.output if name in half and name not in outputs]
        for name in rounded:
            node.output[list(node.output).index(name)] = f"{name}__fp32"
        nodes.append(node)
        for name in rounded:
            nodes.append(onnx.helper.make_node("Cast", [f"{name}__fp32"], [f"{name}__fp16"],
                                               to=onnx.TensorProto.FLOAT16, name=f"{name}__to_fp16"))
            nodes.append(onnx.helper.make_node("Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT,
                                               name=f"{name}__to_fp32"))
    del wide.graph.node[:]
    wide.graph.node.extend(nodes)
    del wide.graph.value_info[:]  # stale types of renamed tensors: let ONNX Runtime infer them
    return wide
