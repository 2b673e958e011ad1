"""Load and validate the ONNX model to quantize: one image input, a complete graph, known input size."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from quant_common.errors import QuantError, require
from quant_common.manifest import sha256_file

_FLOAT_TYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about the model's single image input."""

    path: Path
    sha256: str
    input_name: str
    input_shape: tuple[int | str, ...]  # str for symbolic/unknown dimensions
    input_dtype: str
    output_names: tuple[str, ...]
    opset: int

    @property
    def fixed_batch(self) -> int | None:
        dim = self.input_shape[0]
        return dim if isinstance(dim, int) else None

    @property
    def fixed_hw(self) -> tuple[int, int] | None:
        h, w = self.input_shape[2], self.input_shape[3]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:
        dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?"))
    return tuple(dims)


def read_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse an ONNX file (no checks beyond that); a missing or unreadable file is one line."""
    src = Path(path)
    if not src.is_file():
        raise QuantError(f"model file not found: {src}", "pass the path of an ONNX export (e.g. yolov8n.onnx)")
    try:
        return onnx.load(str(src))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError/RuntimeError variants
        raise QuantError(f"{src} is not a readable ONNX model (corrupt or truncated file: {exc.__class__.__name__})",
                         "re-export the model or copy it again") from exc


def load_model(path: str | os.PathLike[str]) -> tuple[ModelInfo, onnx.ModelProto]:
    """Read ``path`` and check it is a complete ONNX model with exactly one NCHW image input.

    The one read of the model per build: stages below take the returned ``ModelProto`` (and never modify it).
    """
    src = Path(path)
    model = read_onnx(src)
    if not model.graph.node or not model.graph.output:
        raise QuantError(f"{src} is not a complete ONNX model (no graph nodes or outputs; truncated file?)",
                         "re-export the model or copy it again")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - ValidationError and protobuf errors
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise QuantError(f"{src} is not a valid ONNX model ({first})", "re-export the model") from exc
    return inspect_model(model, src), model


def inspect_model(model: onnx.ModelProto, path: Path) -> ModelInfo:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise QuantError(f"{path} has {len(inputs)} inputs ({names}); vision-quant needs exactly one image input",
                         "export the model with a single NCHW image input (e.g. Ultralytics export)")
    image = inputs[0]
    elem = image.type.tensor_type.elem_type
    shape = _dims(image)
    channels_ok = len(shape) == 4 and (shape[1] == 3 or isinstance(shape[1], str))
    if elem not in _FLOAT_TYPES or not channels_ok:
        raise QuantError(f"{path}: input '{image.name}' is not an image tensor (type "
                         f"{onnx.TensorProto.DataType.Name(elem)}, shape {list(shape)}; expected float Nx3xHxW)",
                         "export the model with a float32 NCHW RGB image input")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ModelInfo(path=path, sha256=sha256_file(path), input_name=image.name, input_shape=shape,
                     input_dtype=_FLOAT_TYPES[elem], output_names=tuple(o.name for o in model.graph.output),
                     opset=opset)


def resolve_input_hw(info: ModelInfo, imgsz: tuple[int, int] | None) -> tuple[int, int]:
    """The network input size: fixed in the model, or ``--imgsz`` for dynamic H/W (never both disagreeing)."""
    fixed = info.fixed_hw
    if fixed is not None:
        if imgsz is not None and tuple(imgsz) != fixed:
            raise QuantError(f"--imgsz {imgsz[0]},{imgsz[1]} differs from the model's fixed input size "
                             f"{fixed[0]}x{fixed[1]}", "drop --imgsz or re-export the model with dynamic=True")
        return fixed
    if imgsz is None:
        raise QuantError(f"the model's input '{info.input_name}' has a dynamic size {list(info.input_shape)}",
                         "pass --imgsz (e.g. --imgsz 640) to choose the calibration size")
    for dim, want in zip(info.input_shape[2:], imgsz, strict=True):
        if isinstance(dim, int) and dim != want:
            raise QuantError(f"--imgsz {imgsz} differs from the model's fixed dimension {dim}", "match the model")
    return tuple(imgsz)  # type: ignore[return-value]


def resolve_batch(info: ModelInfo, batch: int | None, default_dynamic: int = 8) -> int:
    """Calibration batch: the model's fixed batch, or ``batch`` (default 8) when the batch dimension is dynamic."""
    fixed = info.fixed_batch
    if fixed is not None:
        if batch is not None and batch != fixed:
            raise QuantError(f"--batch {batch} differs from the model's fixed batch size {fixed}",
                             f"use --batch {fixed} or re-export the model with a dynamic batch (dynamic=True)")
        return fixed
    return batch or default_dynamic


def simplify(model_path: Path, out_path: Path) -> Path:
    """Run onnxslim (constant folding, dead-node removal) and save to ``out_path``."""
    onnxslim = require("onnxslim", purpose="--simplify", install="pip install onnxslim")
    try:
        slim = onnxslim.slim(str(model_path))
    except Exception as exc:  # noqa: BLE001 - onnxslim raises assorted errors
        raise QuantError(f"onnxslim could not simplify {model_path}: {str(exc).splitlines()[0] if str(exc) else exc}",
                         "run without --simplify") from exc
    onnx.save(slim, str(out_path))
    return out_path
