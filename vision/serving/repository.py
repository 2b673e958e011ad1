"""`vision-quant package`: a Triton model repository from a `vision-quant build` output.

    yolov8 (ensemble): image (BYTES) -> preprocess -> detector -> postprocess -> boxes, scores, classes, names,
                       num_detections

``preprocess`` and ``postprocess`` are python-backend models running this package's own letterbox and YOLO decode
(the code ``vision-quant predict`` runs). ``detector`` is, by default, a python-backend model running our
``Runner`` on the build's INT8 ONNX (runs on the bundled CPU server); ``--detector tensorrt|onnxruntime|
onnxruntime_trt|openvino`` writes it for that Triton backend instead (a cited table says how each is configured).
The tree is staged beside ``out`` and swapped in whole; every config.pbtxt is validated before it is written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, get_args

import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quant_common.atomic import atomic_write_json, staged_dir
from quant_common.errors import QuantError
from quant_common.manifest import package_versions, utc_now
from triton_backend.config_pbtxt import EnsembleStep, ModelSpec, Tensor
from vision.backends.select import BackendName
from vision.evaluation.predict import class_names_from_onnx
from vision.serving import configs
from vision.serving.configs import DetectorKind, Scheduling

MODELS_SOURCE = Path(__file__).resolve().parent / "models"
MANIFEST = "repository.json"
ENSEMBLE = "yolov8"
ENGINE_GLOB = "model.*.engine"
# The model a build leaves for ONNX Runtime/OpenVINO, best first (INT8 in ONNX Runtime's layout, else TensorRT's).
ONNX_CANDIDATES = ("model.int8.ort.onnx", "model.int8.onnx")
_ONNX_TYPES: dict[int, str] = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


class ServingOptions(BaseModel):
    """How the repository serves the detector. Defaults: the embedded python detector on the CPU."""

    model_config = ConfigDict(extra="forbid")

    detector: DetectorKind = "python"
    runner_backend: str = "auto"  # python detector: vision.backends.select.load_runner's backend
    max_batch_size: int | None = Field(None, ge=1)  # default: the build's --max-batch (its engine profile)
    max_queue_delay_us: int = Field(2000, ge=0)
    instances: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)  # python detector's runtime threads (default: all cores)
    conf: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.7, ge=0, le=1)
    max_det: int = Field(300, ge=1)
    max_image_pixels: int = Field(50_000_000, ge=1)  # larger uploads are refused from their header


def serving_options(**values: Any) -> ServingOptions:
    """``ServingOptions`` from keyword values; a bad one is one ``QuantError`` line naming it."""
    try:
        return ServingOptions.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        if field == "detector":
            raise QuantError(f"unknown detector {values.get('detector')!r}",
                             "use python, tensorrt, onnxruntime, onnxruntime_trt or openvino") from exc
        raise QuantError(f"invalid {field}: {error['msg']}", "fix the option") from exc


class PackageResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    detector: str
    model_file: Path
    models: list[str]
    max_batch_size: int
    preferred_batch_sizes: list[int]
    class_names: list[str]


def _read_build(build_dir: Path) -> dict[str, Any]:
    manifest = build_dir / "build.json"
    if not manifest.is_file():
        raise QuantError(f"{build_dir} is not a vision-quant build output (no build.json)",
                         "pass the --out folder of `vision-quant build`")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantError(f"{manifest} is unreadable ({exc})", "rerun vision-quant build") from exc
    if not isinstance(data, dict) or "model" not in data:
        raise QuantError(f"{manifest} does not describe a build", "rerun vision-quant build")
    return data


def _model_file(build_dir: Path, build: dict[str, Any], detector: DetectorKind) -> Path:
    if detector == "tensorrt":
        engines = sorted(build_dir.glob(ENGINE_GLOB))
        if not engines:
            raise QuantError(f"{build_dir} holds no TensorRT engine ({ENGINE_GLOB})",
                             "build on a machine with TensorRT (vision-quant build --backend tensorrt), or "
                             "package the ONNX model with --detector onnxruntime or python")
        return engines[0]
    for name in ONNX_CANDIDATES:
        if (build_dir / name).is_file():
            return build_dir / name
    original = Path(str(build["model"].get("path", "")))
    if original.is_file():
        return original
    raise QuantError(f"{build_dir} holds no ONNX model to serve ({', '.join(ONNX_CANDIDATES)})",
                     "pass the --out folder of a finished vision-quant build")


def _tensor(value: onnx.ValueInfoProto, hw: tuple[int, int] | None = None) -> tuple[str, str, tuple[int, ...]]:
    kind = value.type.tensor_type
    dtype = _ONNX_TYPES.get(kind.elem_type)
    if dtype is None:
        raise QuantError(f"tensor {value.name!r} has ONNX type {kind.elem_type}, not float",
                         "pass a YOLOv8 detection model with float input and output")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim)
    if hw is not None and len(dims) == 4:
        dims = (dims[0], dims[1], hw[0], hw[1])
    return value.name, dtype, dims[1:]  # without the batch dimension


def _signature(onnx_path: Path, hw: tuple[int, int]) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
        raise QuantError(f"cannot read {onnx_path}: {exc}", "pass the folder of a finished build") from exc
    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise QuantError(f"{onnx_path.name} has {len(inputs)} inputs and {len(model.graph.output)} outputs; "
                         "the detector must take one image batch and give one YOLO output",
                         "export the YOLOv8 model with a single output (Ultralytics format=onnx)")
    return _tensor(inputs[0], hw), _tensor(model.graph.output[0])


def _batch_plan(build: dict[str, Any], options: ServingOptions) -> tuple[int, list[int]]:
    """(max_batch_size, preferred sizes): the build's engine profile (opt = min(max, 8), max = --max-batch)."""
    max_batch = options.max_batch_size or int(build.get("config", {}).get("max_batch", 8))
    return max_batch, sorted({min(max_batch, 8), max_batch})


def _copy_code(name: str, model_dir: Path) -> None:
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODELS_SOURCE / f"{name}.py", model_dir / "1" / "model.py")


def package(build_dir: str | Path, out: str | Path | None = None,
            options: ServingOptions | None = None) -> PackageResult:
    """Write the repository for ``build_dir`` to ``out`` (default ``BUILD_DIR/triton_repo``)."""
    opts = options or ServingOptions.model_validate({})
    runtimes = get_args(BackendName)
    if opts.detector == "python" and opts.runner_backend not in runtimes:
        raise QuantError(f"unknown runner backend {opts.runner_backend!r} for the python detector",
                         f"use one of {', '.join(runtimes)}")
    build_path = Path(build_dir)
    build = _read_build(build_path)
    out_path = Path(out) if out is not None else build_path / "triton_repo"
    model_file = _model_file(build_path, build, opts.detector)
    shape = build["model"].get("input_shape") or []
    onnx_for_signature = model_file if model_file.suffix == ".onnx" else _model_file(build_path, build, "python")
    hw = (int(shape[2]), int(shape[3])) if len(shape) == 4 and all(isinstance(d, int) for d in shape[2:]) \
        else tuple(build.get("config", {}).get("imgsz") or (640, 640))
    (in_name, in_type, in_dims), (out_name, out_type, out_dims) = _signature(onnx_for_signature, hw)  # type: ignore[arg-type]
    names = class_names_from_onnx(Path(str(build["model"].get("path", "")))) or \
        class_names_from_onnx(onnx_for_signature) or []
    max_batch, preferred = _batch_plan(build, opts)
    if opts.detector != "python" and shape and isinstance(shape[0], int) and shape[0] > 0:
        # Triton batches along a dynamic first dimension; a fixed-batch model or engine cannot take its batches.
        raise QuantError(f"the build's model has a fixed batch size of {shape[0]}; the {opts.detector} detector "
                         "needs a dynamic batch dimension to batch requests",
                         "re-export the model with a dynamic batch (Ultralytics dynamic=True) and rebuild, or "
                         "use --detector python (it runs fixed-batch models)")
    image_hw = (in_dims[1], in_dims[2])

    with staged_dir(out_path) as tmp:
        pre = ModelSpec("preprocess", max_batch, backend="python", inputs=[Tensor("image", "TYPE_STRING", (1,))],
                        outputs=[Tensor("images", in_type, in_dims), Tensor("letterbox", "TYPE_FP32", (5,))],
                        parameters={"input_hw": f"{image_hw[0]},{image_hw[1]}",
                                    "max_image_pixels": opts.max_image_pixels})
        configs.write(tmp / "preprocess", pre, Scheduling(instance_kind="KIND_CPU", instance_count=opts.instances))
        _copy_code("preprocess", tmp / "preprocess")

        io = {"inputs": [Tensor(in_name, in_type, in_dims)], "outputs": [Tensor(out_name, out_type, out_dims)]}
        if opts.detector == "python":
            params: dict[str, Any] = {"model_file": model_file.name, "runner_backend": opts.runner_backend}
            if opts.threads:
                params["threads"] = opts.threads
            spec = ModelSpec("detector", max_batch, io["inputs"], io["outputs"], backend="python", parameters=params)
            scheduling = Scheduling(preferred, opts.max_queue_delay_us, "KIND_CPU", opts.instances)
            target_name = model_file.name
            _copy_code("detector", tmp / "detector")
        else:
            fact, scheduling = configs.detector_runtime(opts.detector, preferred, opts.max_queue_delay_us,
                                                        opts.instances)
            spec = ModelSpec("detector", max_batch, io["inputs"], io["outputs"], backend=fact.backend,
                             platform=fact.platform, parameters=dict(fact.parameters))
            target_name = fact.model_file
        configs.write(tmp / "detector", spec, scheduling)
        (tmp / "detector" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_file, tmp / "detector" / "1" / target_name)

        scalar = (1,)
        post = ModelSpec("postprocess", max_batch, backend="python",
                         inputs=[Tensor(out_name, out_type, out_dims), Tensor("letterbox", "TYPE_FP32", (5,)),
                                 Tensor("conf_threshold", "TYPE_FP32", scalar, optional=True),
                                 Tensor("iou_threshold", "TYPE_FP32", scalar, optional=True),
                                 Tensor("max_det", "TYPE_INT32", scalar, optional=True),
                                 Tensor("multi_label", "TYPE_BOOL", scalar, optional=True)],
                         outputs=[Tensor("boxes", "TYPE_FP32", (-1, 4)), Tensor("scores", "TYPE_FP32", (-1,)),
                                  Tensor("classes", "TYPE_INT32", (-1,)), Tensor("names", "TYPE_STRING", (-1,)),
                                  Tensor("num_detections", "TYPE_INT32", (1,))],
                         parameters={"detector_output": out_name, "class_names": json.dumps(names),
                                     "conf_threshold": opts.conf, "iou_threshold": opts.iou, "max_det": opts.max_det})
        configs.write(tmp / "postprocess", post, Scheduling(instance_kind="KIND_CPU", instance_count=opts.instances))
        _copy_code("postprocess", tmp / "postprocess")

        results = ["boxes", "scores", "classes", "names", "num_detections"]
        options_in = ["conf_threshold", "iou_threshold", "max_det", "multi_label"]
        ensemble = ModelSpec(
            ENSEMBLE, max_batch, platform="ensemble",
            inputs=[Tensor("image", "TYPE_STRING", (1,))] + [t for t in post.inputs if t.name in options_in],
            outputs=[t for t in post.outputs if t.name in results],
            steps=[EnsembleStep("preprocess", {"image": "image"}, {"images": "_images", "letterbox": "_letterbox"}),
                   EnsembleStep("detector", {in_name: "_images"}, {out_name: "_raw"}),
                   EnsembleStep("postprocess", {out_name: "_raw", "letterbox": "_letterbox",
                                                **{n: n for n in options_in}}, {n: n for n in results})])
        configs.write(tmp / ENSEMBLE, ensemble)
        (tmp / ENSEMBLE / "1").mkdir()
        result = PackageResult(path=out_path, detector=opts.detector, model_file=model_file,
                               models=["preprocess", "detector", "postprocess", ENSEMBLE], max_batch_size=max_batch,
                               preferred_batch_sizes=preferred, class_names=names)
        atomic_write_json(tmp / MANIFEST, {"created": utc_now(), "build": str(build_path.resolve()),
                                          "options": opts.model_dump(mode="json"),
                                          **result.model_dump(mode="json", exclude={"path"}),
                                          "packages": package_versions(("tensorrt-quantization", "tritonclient"))})
    return result
