"""`build(cfg) -> BuildResult`: model → calibration data → statistics → cache → Q/DQ models → engine → build.json.

Every artifact is written into a staging directory inside ``--out`` and moved into place only when the whole build
succeeded, so a failure leaves ``--out`` as it was (an ``--out`` created by this run is removed again).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant_common.atomic import atomic_write_json, ensure_output_dir, publish
from quant_common.errors import QuantError, is_importable
from quant_common.manifest import Timings, package_versions, utc_now
from vision.config import BUNDLED_MODEL, DEFAULT_TRT_VERSION, VisionConfig
from vision.model import load_model, resolve_batch, resolve_input_hw, simplify
from vision.artifacts.trtexec import trtexec_commands

PACKAGES = ("tensorrt-quantization", "numpy", "onnx", "onnxruntime", "nvidia-modelopt", "onnxslim", "tensorrt")


@dataclass
class BuildResult:
    out_dir: Path
    artifacts: dict[str, Path]
    precision: str
    backend: str
    calibrator: str | None = None
    calibrator_options: dict[str, Any] = field(default_factory=dict)
    cache_reused: bool = False
    images: int = 0
    skipped_images: dict[str, str] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None
    qdq: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)
    mixed_precision: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object."""
        return {"out": str(self.out_dir), "artifacts": {k: str(v) for k, v in self.artifacts.items()},
                "precision": self.precision, "backend": self.backend, "calibrator": self.calibrator,
                "calibrator_options": self.calibrator_options, "cache_reused": self.cache_reused,
                "images": self.images, "skipped_images": len(self.skipped_images), "agreement": self.agreement,
                "qdq": self.qdq, "engine": self.engine, "timings": self.timings,
                "float_layers": len(self.float_layers),
                "mixed_precision": {k: v for k, v in self.mixed_precision.items()
                                    if k not in ("trials", "layer_errors")} if self.mixed_precision else None}


def resolve_backend(name: str) -> str:
    if name == "auto":
        return "tensorrt" if is_importable("tensorrt") else "onnxruntime"
    if name == "tensorrt" and not is_importable("tensorrt"):
        from vision.backends.trt import import_tensorrt

        import_tensorrt()  # raises the one-line MissingDependencyError
    return name


def resolve_model(cfg: VisionConfig) -> Path:
    if cfg.model is not None:
        return cfg.model
    if BUNDLED_MODEL.is_file():
        return BUNDLED_MODEL
    raise QuantError(f"no model given and the bundled detector {BUNDLED_MODEL.name} is not installed",
                     "pass MODEL.onnx (e.g. an Ultralytics YOLOv8 export)")


@contextlib.contextmanager
def _staging(out: Path) -> Any:
    """A private directory inside ``out``; removed afterwards, and ``out`` too if this run created it empty."""
    created = not out.exists()
    ensure_output_dir(out)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only succeeds while empty, i.e. when the build failed


def check_budget_options(cfg: VisionConfig) -> None:
    """--accuracy-budget needs a labelled set and INT8; say so before any long work."""
    if cfg.accuracy_budget is None:
        return
    if cfg.data is None or cfg.annotations is None:
        raise QuantError("--accuracy-budget needs a labelled set to measure mAP on (--data DIR and --annotations FILE)",
                         "pass --data IMAGES_DIR --annotations coco.json, or drop --accuracy-budget")
    if cfg.precision != "int8":
        raise QuantError(f"--accuracy-budget applies to INT8 builds, not --precision {cfg.precision}",
                         "use --precision int8 or drop --accuracy-budget")
    if not cfg.data.is_dir():
        raise QuantError(f"--data directory not found: {cfg.data}", "pass the directory holding the labelled images")
    if not cfg.annotations.is_file():
        raise QuantError(f"annotation file not found: {cfg.annotations}", "pass a COCO-format instances json")


def _header_version(cfg: VisionConfig, backend: str) -> str:
    """The cache header must name the TensorRT that reads it, or TensorRT ignores the cache silently (#1378)."""
    if backend != "tensorrt":
        return cfg.trt_version or DEFAULT_TRT_VERSION
    from vision.backends.trt import import_tensorrt

    installed = ".".join(import_tensorrt().__version__.split(".")[:3])
    if cfg.trt_version is not None and cfg.trt_version != installed:
        raise QuantError(f"--trt-version {cfg.trt_version} differs from the installed TensorRT {installed}",
                         "drop --trt-version when building engines, or use --backend onnxruntime")
    return installed


def build(cfg: VisionConfig) -> BuildResult:
    """Run the whole pipeline for ``cfg``; raise ``QuantError`` for anything the user can fix."""
    timings = Timings()
    check_budget_options(cfg)
    backend = resolve_backend(cfg.backend)
    model_path = resolve_model(cfg)
    with timings.measure("load_model"):
        info, _ = load_model(model_path)
    original_sha256 = info.sha256
    out = cfg.out
    with _staging(out) as staging:
        if cfg.simplify:
            with timings.measure("simplify"):
                simplify(info.path, staging / "model.simplified.onnx")
                info, _ = load_model(staging / "model.simplified.onnx")
        result = BuildResult(out_dir=out, artifacts={}, precision=cfg.precision, backend=backend)
        manifest: dict[str, Any] = {"created": utc_now(), "model": {"path": str(model_path), "sha256": original_sha256,
                                                                    "input": info.input_name,
                                                                    "input_shape": list(info.input_shape),
                                                                    "opset": info.opset, "simplified": cfg.simplify,
                                                                    "quantized_sha256": info.sha256},
                                    "config": cfg.model_dump(mode="json")}
        staged: dict[str, Path] = {}
        hw = resolve_input_hw(info, cfg.imgsz)
        batch = resolve_batch(info, cfg.batch)
        int8 = None
        if cfg.precision == "int8":
            from vision.pipeline.stages import quantize_int8

            int8 = quantize_int8(cfg, info, hw, batch, staging, timings, _header_version(cfg, backend))
            staged.update(int8.staged)
            manifest.update(int8.manifest)
            result.calibrator = cfg.calibrator
            result.calibrator_options = manifest["calibrator"]["options"]
            result.cache_reused, result.images, result.skipped_images = int8.cache_reused, int8.images, int8.skipped
            result.agreement, result.qdq = int8.agreement, int8.qdq
            result.float_layers, result.mixed_precision = int8.float_layers, int8.mixed_precision
        if backend == "tensorrt":
            from vision.pipeline.stages import build_trt_engine

            with timings.measure("engine"):
                result.engine = build_trt_engine(cfg, info, hw, staging, int8)
            staged[f"engine_{cfg.precision}"] = Path(result.engine["engine"])
            staged["timing_cache"] = staging / "model.timing.cache"
            manifest["engine"] = result.engine
        manifest["trtexec"] = trtexec_commands(info, hw, cfg.max_batch, "calibration.cache" if "cache" in staged
                                               else None, "model.int8.onnx" if "qdq_trt" in staged else None)
        manifest["packages"] = package_versions(PACKAGES)
        manifest["timings"] = dict(timings)
        atomic_write_json(staging / "build.json", manifest)
        staged["build_json"] = staging / "build.json"
        result.artifacts = _publish(staged, out, cfg)
        result.timings = dict(timings)
    return result


def _publish(staged: dict[str, Path], out: Path, cfg: VisionConfig) -> dict[str, Path]:
    """Move finished artifacts from staging into place, each by an atomic rename (build.json last)."""
    from vision.artifacts.cache import sidecar_path

    special = {"cache": cfg.cache_path, "cache_provenance": sidecar_path(cfg.cache_path), "stats": cfg.save_stats}
    final: dict[str, Path] = {}
    for key in sorted(staged, key=lambda k: k == "build_json"):
        src = staged[key]
        final[key] = publish(src, special.get(key) or out / src.name)  # --save-stats may be on another disk
    return final
