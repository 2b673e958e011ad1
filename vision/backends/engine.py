"""The engine step of a build: ``model.<precision>.engine`` and its timing cache from the build's artifacts.

Implicit INT8 (TensorRT 8.6-10.x) builds from the FP32 ONNX with a calibrator that reads our calibration cache
(header checked) and so skips TensorRT's own calibration; explicit INT8 (10.x+, the only kind on 11) builds a
strongly typed network from the TensorRT-layout Q/DQ ONNX. FP16 on 11.x (no FP16 builder flag) builds a strongly
typed network from ``model.fp16.onnx``, written here. The request is plain data, so any pipeline can ask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from quant_common.errors import QuantError
from vision.backends.fp16_onnx import write_fp16_onnx
from vision.backends.trt import (
    CalibrationFeed,
    EngineSpec,
    build_engine,
    choose_int8_mode,
    import_tensorrt,
    make_calibrator,
    needs_fp16_onnx,
)
from vision.data.images import CalibrationSet
from vision.model import ModelInfo


@dataclass(frozen=True)
class EngineRequest:
    """What to build an engine from: the FP32 model, and for INT8 the cache or the Q/DQ model beside it."""

    model: ModelInfo  # the FP32 ONNX (TensorRT parses its file)
    input_hw: tuple[int, int]
    precision: Literal["int8", "fp16", "fp32"]
    out_dir: Path  # where model.<precision>.engine and model.timing.cache are written
    int8_mode: Literal["auto", "implicit", "explicit"] = "auto"
    workspace_gb: float = 4.0
    max_batch: int = 8
    qdq_model: Path | None = None  # model.int8.onnx, for explicit INT8
    # calibration.cache's bytes for implicit INT8, validated by the caller (vision.artifacts.cache.load_for_tensorrt):
    # checks inside the calibrator would be swallowed by TensorRT's binding, which then calibrates on its own
    cache: bytes | None = None
    cache_header: str = ""
    calibration: CalibrationSet | None = None  # batches, should TensorRT calibrate anyway
    float_layers: tuple[str, ...] = ()  # ONNX nodes kept out of INT8 (head, accuracy budget)


@dataclass
class EngineResult:
    path: Path
    staged: dict[str, Path] = field(default_factory=dict)  # artifact key -> file, in publishing order
    facts: dict[str, Any] = field(default_factory=dict)  # for build.json


def build_trt_engine(request: EngineRequest) -> EngineResult:
    """``model.<precision>.engine`` + timing cache with TensorRT (implicit calibrators on ≤10.x, Q/DQ on 11+)."""
    trt = import_tensorrt()
    mode = choose_int8_mode(trt.__version__, None if request.int8_mode == "auto" else request.int8_mode)
    int8 = request.precision == "int8"
    if int8 and mode == "explicit" and request.qdq_model is None:
        raise QuantError("explicit INT8 needs the Q/DQ model", "run the INT8 stages first")
    info = request.model
    onnx_path = request.qdq_model if int8 and mode == "explicit" and request.qdq_model else info.path
    staged: dict[str, Path] = {}
    fp16_onnx = request.precision == "fp16" and needs_fp16_onnx(trt.__version__)
    if fp16_onnx:
        onnx_path = write_fp16_onnx(info.path, request.out_dir / "model.fp16.onnx")
        staged["fp16_onnx"] = onnx_path
    spec = EngineSpec(onnx_path=onnx_path, engine_path=request.out_dir / f"model.{request.precision}.engine",
                      precision=request.precision, input_name=info.input_name, input_hw=request.input_hw,
                      dynamic_batch=info.fixed_batch is None, opt_batch=min(request.max_batch, 8),
                      max_batch=request.max_batch, fixed_batch=info.fixed_batch or 1,
                      dynamic_hw=info.fixed_hw is None, workspace_gb=request.workspace_gb,
                      timing_cache_path=request.out_dir / "model.timing.cache", int8_mode=mode,
                      strongly_typed=fp16_onnx or (int8 and mode == "explicit"), float_layers=request.float_layers)
    calibrator = feed = None
    if int8 and mode == "implicit":
        if request.cache is None:
            raise QuantError("implicit INT8 needs the calibration cache", "run the INT8 stages first")
        calib = request.calibration
        # Given a cache it accepts, TensorRT asks for no data: no batches are handed over, so a cache it refuses
        # fails the build by name (CalibrationFeed.check) instead of TensorRT calibrating and writing its own.
        feed = CalibrationFeed([], calib.batch if calib else 1, request.cache)
        calibrator = make_calibrator(feed, request.cache_header.rsplit("-", 1)[-1])
    try:
        facts = build_engine(spec, calibrator)
    except QuantError:
        if feed is not None:
            feed.check(trt.__version__)  # what TensorRT swallowed explains the failure better
        raise
    if feed is not None:
        facts["calibration"] = feed.check(trt.__version__)
    assert spec.timing_cache_path is not None
    staged.update({f"engine_{request.precision}": spec.engine_path, "timing_cache": spec.timing_cache_path})
    return EngineResult(spec.engine_path, staged, facts)
