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


def write_fp16_onnx(model_path: Path, out_path: Path) -> Path:
    require("modelopt.onnx.autocast", purpose="the FP16 ONNX model", install="pip install nvidia-modelopt")
    from modelopt.onnx.autocast.convert import convert_to_f16

    logging.getLogger("modelopt").setLevel(logging.ERROR)
    try:
        converted = convert_to_f16(onnx.load(str(model_path)), low_precision_type="fp16", keep_io_types=True)
    except Exception as exc:  # noqa: BLE001 - modelopt raises assorted errors
        raise QuantError(f"modelopt could not convert {model_path.name} to FP16: "
                         f"{str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__}",
                         "check the model runs in ONNX Runtime, or use --precision fp32/int8") from exc
    with staged_file(out_path) as staged:
        onnx.save(converted, str(staged))
    return out_path
