"""`VisionConfig`: every option of `vision-quant build`, loaded from a YAML preset and overridden by the CLI.

The preset lives once, in ``configs/yolov8.yaml``; ``vision/presets/yolov8.yaml`` links to it so the installed
package carries it too (read through ``importlib.resources``).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quant_common.errors import QuantError
from vision.backends.select import BackendName
from vision.calibration.calibrators import CALIBRATOR_NAMES

if TYPE_CHECKING:
    Calibrator = str
else:  # the calibrator table's names: pydantic checks the choice and lists the names when it is wrong
    Calibrator = Literal[CALIBRATOR_NAMES]
Precision = Literal["int8", "fp16", "fp32"]
Histogram = Literal["fine", "trt"]

DEFAULT_PRESET = "yolov8"
# The trained detector the YOLOv8 work ships inside the package (used when no model is given).
BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "yolov8n_shapes.onnx"


class VisionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: Path | None = None
    calib_data: Path | None = None
    synthetic_calib_images: int = Field(64, ge=1)
    max_calib_images: int | None = Field(512, ge=1)
    batch: int | None = Field(None, ge=1)
    imgsz: tuple[int, int] | None = None
    seed: int = 0

    calibrator: Calibrator = "minmax"
    percentile: float = Field(99.99, gt=0, le=100)
    histogram: Histogram = "fine"
    num_bins: int = Field(2048, ge=128)

    precision: Precision = "int8"
    backend: BackendName = "auto"
    trt_version: str | None = None  # None: the installed TensorRT, else vision.backends.select.DEFAULT_TRT_VERSION
    calib_cache: Path | None = None
    force: bool = False
    simplify: bool = False
    save_stats: Path | None = None
    agreement_images: int = Field(4, ge=0)
    # Scale stability: also calibrate on this many seeded half-subsets of the calibration batches (0: off) and
    # report each tensor's amax spread over them (quant_common.stability); the model still runs once per batch.
    calib_stability: int = Field(0, ge=0)
    stability_threshold: float = Field(0.1, gt=0)  # flag a tensor whose amax moves by more than this fraction

    # Layers kept out of INT8. The detection head's all-anchor part (vision.graph.head_nodes) collapses in INT8 on
    # YOLO (its Sigmoid/Concat; Ultralytics keeps the head Sigmoid in FP32); both Q/DQ models and TensorRT's
    # implicit build keep it in float by default.
    keep_head_fp32: bool = True
    # ONNX Runtime layout weight storage: int8 (fast u8s8 kernels, exact only with VNNI), uint8 (zero point 128,
    # exact on every x86 CPU), auto = by this CPU (vision.artifacts.qdq_weights). Scales are the same either way.
    ort_weights: Literal["auto", "int8", "uint8"] = "auto"
    # OpenVINO layout weight bits: 8 (exact with VNNI), 7 (u8 x s8 pairs stay below int16 on CPUs without VNNI,
    # where 8-bit weights saturate), auto = by this CPU (vision.artifacts.qdq_ov).
    ov_weight_bits: Literal["auto", "8", "7"] = "auto"
    # TensorRT layout: the type of its unquantized layers (vision.artifacts.qdq_trt.trt_float_dtype decides `auto`):
    # fp16 where the target TensorRT builds it strongly typed (>= 10: FP32 there makes INT8 slower than FP16,
    # NVIDIA/TensorRT#993) or the export is FP16, else fp32. Its accuracy is measured with the FP16 tensors emulated
    # in FP32 arithmetic: ONNX Runtime's CPU FP16 kernels cost it ~20 mAP50-95 points that TensorRT's do not
    # (docs/vision.md). fp32 keeps the float parts FP32.
    trt_high_precision: Literal["fp32", "fp16", "auto"] = "auto"
    # Accuracy-budgeted mixed precision: keep whole regions in float, chosen on mAP50-95 on `data`/`annotations` and
    # on latency measured on each layout's runtime, until FP32 minus INT8 (points) is within the budget.
    accuracy_budget: float | None = Field(None, ge=0)
    data: Path | None = None
    annotations: Path | None = None
    budget_max_images: int | None = Field(100, ge=1)
    class_map: Path | None = None  # model class -> category id for `annotations` (see vision-quant eval)
    sensitivity_images: int = Field(8, ge=1)  # calibration images whose output SQNR prices each float region
    # A float-layer set meets the budget when the upper end of its mAP loss's 95 % interval (paired bootstrap over
    # the budget images) does ("ci"), or when the measured loss does ("point"); quant_common.search.BUDGET_RULES.
    budget_rule: Literal["ci", "point"] = "ci"
    bootstrap_resamples: int = Field(1000, ge=10)  # resamples of every reported Δ mAP's interval

    trt_int8: Literal["auto", "implicit", "explicit"] = "auto"
    workspace_gb: float = Field(4, gt=0)
    max_batch: int = Field(8, ge=1)

    out: Path = Path("out/vision")

    @field_validator("calib_stability")
    @classmethod
    def _check_stability(cls, value: int) -> int:
        if value == 1:
            raise ValueError("one calibration subset shows no spread: pass 0 (off) or at least 2")
        return value

    @field_validator("imgsz", mode="before")
    @classmethod
    def _parse_imgsz(cls, value: Any) -> Any:
        return parse_imgsz(value) if isinstance(value, (int, str)) else value

    @field_validator("trt_version")
    @classmethod
    def _check_trt_version(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"\d+(\.\d+){1,3}", value.strip()):
            raise ValueError(f"'{value}' is not a TensorRT version such as 10.13.0 or 8.6.1")
        return value.strip()

    @property
    def cache_path(self) -> Path:
        return self.calib_cache if self.calib_cache is not None else self.out / "calibration.cache"


def parse_imgsz(value: int | str) -> tuple[int, int]:
    """``640`` / ``"640"`` / ``"480,640"`` / ``"480x640"`` → ``(h, w)``."""
    parts = [p for p in re.split(r"[,x× ]+", str(value).strip()) if p]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 32:
        raise ValueError(f"imgsz '{value}' must be one size or H,W, each at least 32")
    return dims[0], dims[1]


def preset_text(name: str = DEFAULT_PRESET) -> str:
    """The YAML text of a packaged preset (works from a checkout and from an installed wheel)."""
    resource = resources.files("vision.presets").joinpath(f"{name}.yaml")
    if not resource.is_file():
        raise QuantError(f"unknown vision preset '{name}'", f"use one of: {', '.join(available_presets())}")
    return resource.read_text(encoding="utf-8")


def available_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("vision.presets").iterdir() if p.name.endswith(".yaml"))


def load_config(source: str | os.PathLike[str] | None = None, **overrides: Any) -> VisionConfig:
    """Read a preset (name or YAML path; default ``yolov8``) and apply ``overrides`` whose value is not None."""
    if source is not None and Path(source).suffix in {".yaml", ".yml"}:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise QuantError(f"cannot read config {path}: {exc.strerror or exc}", "check the --config path") from exc
        label = str(path)
    else:
        name = str(source) if source is not None else DEFAULT_PRESET
        text, label = preset_text(name), f"preset '{name}'"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise QuantError(f"{label} is not valid YAML: {str(exc).splitlines()[0]}", "fix the YAML syntax") from exc
    if not isinstance(data, dict):
        raise QuantError(f"{label} must be a mapping of options", "see configs/yolov8.yaml")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return VisionConfig.model_validate(data)
    except ValidationError as exc:
        raise QuantError(f"invalid vision option in {label} or the command line: {_first_error(exc)}",
                         "see `vision-quant build --help` and configs/yolov8.yaml") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "config"
    if err.get("type") == "extra_forbidden":
        return f"unknown option '{where}'"
    value = err.get("input")
    return f"{where}={value!r}: {err.get('msg', 'invalid')}"
