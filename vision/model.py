"""Load and validate the ONNX model to quantize: one image input, a complete graph, known input size."""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from quant_common.errors import QuantError, require
from quant_common.manifest import sha256_file
from vision.graph import topologically_sorted

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
    metadata: Mapping[str, str] = field(default_factory=dict)  # metadata_props (Ultralytics: task, imgsz, end2end)
    reordered: bool = False  # the file's nodes were out of topological order; the loaded model is sorted

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


def carry_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> bool:
    """Copy ``source``'s ``metadata_props`` (an Ultralytics export's names, imgsz, stride, task) into ``target``
    where it lacks them (modelopt's writers drop them); True when anything was added."""
    have = {prop.key for prop in target.metadata_props}
    missing = [prop for prop in source.metadata_props if prop.key not in have]
    for prop in missing:
        target.metadata_props.add(key=prop.key, value=prop.value)
    return bool(missing)


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
        # ONNX Runtime runs graphs whose nodes are out of order; so do we, once sorted
        ordered = topologically_sorted(model) if "topologically sorted" in first else None
        if ordered is None:
            raise QuantError(f"{src} is not a valid ONNX model ({first})", "re-export the model") from exc
        try:
            onnx.checker.check_model(ordered)
        except Exception as again:  # noqa: BLE001 - as above
            text = str(again).strip().splitlines()[0][:200] if str(again).strip() else again.__class__.__name__
            raise QuantError(f"{src} is not a valid ONNX model ({text})", "re-export the model") from again
        return dataclasses.replace(inspect_model(ordered, src), reordered=True), ordered
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
                     opset=opset, metadata={p.key: p.value for p in model.metadata_props})


# Ultralytics' own default export size, used for a dynamic export without imgsz metadata
DEFAULT_IMGSZ = 640


def metadata_imgsz(info: ModelInfo) -> tuple[int, int] | None:
    """The ``imgsz`` an Ultralytics export records (``'[640, 640]'`` or ``'640'``), if any."""
    text = info.metadata.get("imgsz")
    try:
        value = ast.literal_eval(text) if text else None
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int) and value > 0:
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return (value[0], value[1])
    return None


def default_input_hw(info: ModelInfo) -> tuple[tuple[int, int], str]:
    """The size a dynamic export is calibrated at without ``--imgsz``, and one line saying where it came from."""
    recorded = metadata_imgsz(info)
    hw = recorded or (DEFAULT_IMGSZ, DEFAULT_IMGSZ)
    dims = [d if isinstance(d, int) else want for d, want in zip(info.input_shape[2:], hw, strict=True)]
    hw = (dims[0], dims[1])
    origin = "the model's imgsz metadata" if recorded else f"the default {DEFAULT_IMGSZ} (no imgsz metadata)"
    return hw, (f"the model's input size is dynamic: calibrating at {hw[0]}x{hw[1]} from {origin}; "
                "pass --imgsz to choose another")


def resolve_input_hw(info: ModelInfo, imgsz: tuple[int, int] | None,
                     notes: list[str] | None = None) -> tuple[int, int]:
    """The network input size: fixed in the model, or ``--imgsz`` for dynamic H/W (never both disagreeing); a
    dynamic size without ``--imgsz`` is the model's ``imgsz`` metadata, else 640 (the line saying so goes to
    ``notes``)."""
    fixed = info.fixed_hw
    if fixed is not None:
        if imgsz is not None and tuple(imgsz) != fixed:
            raise QuantError(f"--imgsz {imgsz[0]},{imgsz[1]} differs from the model's fixed input size "
                             f"{fixed[0]}x{fixed[1]}", "drop --imgsz or re-export the model with dynamic=True")
        return fixed
    if imgsz is None:
        hw, note = default_input_hw(info)
        if notes is not None:
            notes.append(note)
        return hw
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
