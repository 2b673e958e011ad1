"""The INT8 stages of `build`: calibration data → statistics → calibration cache → two Q/DQ models → agreement,
and the TensorRT engine where TensorRT is installed. Artifacts go to a staging directory; pipeline.py publishes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quant_common.errors import QuantError
from quant_common.manifest import Timings
from vision.config import VisionConfig
from vision.data.images import CalibrationSet
from vision.model import ModelInfo


@dataclass
class Int8Outputs:
    staged: dict[str, Path] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    cache_reused: bool = False
    images: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None
    qdq: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    header: str = ""
    calib: CalibrationSet | None = None  # fed to TensorRT's calibrator should it calibrate itself
    float_layers: list[str] = field(default_factory=list)  # ONNX nodes kept out of INT8 (head, budget)
    mixed_precision: dict[str, Any] | None = None  # the --accuracy-budget search, when asked for


def calibration_source(cfg: VisionConfig, staging: Path) -> tuple[Path, str]:
    """The image source and how it was obtained (given by the user, or generated offline)."""
    if cfg.calib_data is not None:
        if not cfg.calib_data.exists():
            raise QuantError(f"calibration data not found: {cfg.calib_data}",
                             "pass a directory of images or a text file listing them")
        return cfg.calib_data, "given"
    try:
        from vision.data.synthetic import generate_calibration_images
    except ImportError as exc:
        raise QuantError("INT8 needs calibration images and none were given (no --calib-data, no generator)",
                         "pass --calib-data DIR with representative images") from exc
    target = staging / "synthetic-calibration"
    generate_calibration_images(target, cfg.synthetic_calib_images, cfg.seed)
    return target, f"synthetic(n={cfg.synthetic_calib_images}, seed={cfg.seed})"


def stats_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor a TensorRT cache lists. The ORT layout's activations are among them (a tensor outside this set
    is not computed from the image, and write_ort_qdq leaves its nodes in float), so one set of scales serves all."""
    from vision.calibration.stats import quantizable_tensors

    return quantizable_tensors(model)


def method_options(cfg: VisionConfig) -> dict[str, Any]:
    return {"percentile": cfg.percentile} if cfg.calibrator == "percentile" else {}


def quantize_int8(cfg: VisionConfig, info: ModelInfo, hw: tuple[int, int], batch: int, staging: Path,
                  timings: Timings, trt_version: str) -> Int8Outputs:
    from vision.artifacts.cache import (
        CacheProvenance,
        CalibrationCache,
        amax_to_scale,
        check_reusable,
        data_fingerprint,
        make_header,
        sidecar_path,
        write_cache,
    )
    from vision.calibration.calibrators import TRT_ALGORITHM, compute_all
    from vision.calibration.stats import ActivationCollector, save_stats

    outputs = Int8Outputs()
    source, origin = calibration_source(cfg, staging)
    calib = CalibrationSet.from_source(source, info.input_name, hw, batch, max_images=cfg.max_calib_images,
                                       seed=cfg.seed, fixed_batch=info.fixed_batch is not None,
                                       dtype=info.input_dtype)
    outputs.calib = calib
    model = onnx.load(str(info.path))
    tensors = stats_tensors(model)
    # What changes the statistics. The image subset (max_calib_images, seed) is in the data fingerprint already;
    # the batch matters only for TensorRT's growing histogram (ours is independent of batch and order).
    options: dict[str, Any] = {**method_options(cfg), "histogram": cfg.histogram, "num_bins": cfg.num_bins,
                               "imgsz": list(hw)}
    if cfg.histogram == "trt":
        options["batch"] = batch
    expected = CacheProvenance(model_sha256=info.sha256, data_fingerprint=data_fingerprint(calib.paths, options),
                               calibrator=cfg.calibrator, options=options, trt_version=trt_version)
    header = make_header(trt_version, TRT_ALGORITHM[cfg.calibrator])
    cache = check_reusable(cfg.cache_path, expected, tensors, force=cfg.force)
    stats = None
    if cache is None:
        with timings.measure("statistics"), ActivationCollector(info.path, tensors, histogram=cfg.histogram,
                                                                 num_bins=cfg.num_bins) as collector:
            for feeds in calib:
                collector.collect(feeds)
            stats = collector.result()
        with timings.measure("calibrate"):
            amax = compute_all(stats, cfg.calibrator, **method_options(cfg))
        cache = CalibrationCache(header, {name: amax_to_scale(value) for name, value in amax.items()})
        outputs.images, outputs.skipped = calib.images_seen, dict(calib.skipped)
    else:
        outputs.cache_reused = True
        outputs.images = len(calib.paths)
    cache_file = staging / "calibration.cache"
    write_cache(cache_file, cache, provenance=expected)
    outputs.staged["cache"] = cache_file
    outputs.staged["cache_provenance"] = sidecar_path(cache_file)
    if stats is not None and cfg.save_stats is not None:
        save_stats(staging / "stats.npz", stats)
        outputs.staged["stats"] = staging / "stats.npz"

    outputs.scales = {name: float(scale) for name, scale in cache.scales.items()}
    outputs.header = cache.header
    _write_qdq(cfg, info, calib, cache_file, outputs, staging, timings)
    outputs.manifest = {
        "calibration": {"source": str(source), "origin": origin, "images": len(calib.paths),
                        "images_used": outputs.images, "skipped": outputs.skipped,
                        "fingerprint": expected.data_fingerprint, "batch": batch, "imgsz": list(hw)},
        "calibrator": {"method": cfg.calibrator, "options": options, "cache_header": cache.header,
                       "cache_reused": outputs.cache_reused},
        "amax": cache.amax(),
        "qdq": outputs.qdq, "agreement": outputs.agreement,
        "float_layers": outputs.float_layers,
    }
    if outputs.mixed_precision is not None:
        outputs.manifest["mixed_precision"] = outputs.mixed_precision
    return outputs


def _first_images(calib: CalibrationSet, count: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches holding the first ``count`` readable images (unreadable files skipped, as in calibration)."""
    left = count
    for batch in calib.iter_batches(progress=False):
        take = {k: v[:left] for k, v in batch.items()}
        left -= len(next(iter(take.values())))
        yield take
        if left <= 0:
            return


def _write_qdq(cfg: VisionConfig, info: ModelInfo, calib: CalibrationSet, cache_file: Path, outputs: Int8Outputs,
               staging: Path, timings: Timings) -> None:
    from vision.evaluation.agreement import compare
    from vision.backends.onnxrt import OnnxrtRunner
    from vision.artifacts.qdq_ort import write_ort_qdq, write_trt_qdq
    from vision.evaluation.sensitivity import head_nodes

    # One image (one batch for a fixed batch size) is enough: both writers' own calibration is overridden.
    smallest = calib.batch if calib.fixed_batch else 1
    sample = list(_first_images(calib, smallest))
    head = head_nodes(onnx.load(str(info.path))) if cfg.keep_head_fp32 else []
    ort_path = staging / "model.int8.ort.onnx"
    with timings.measure("qdq_onnxruntime"):
        ort_summary = write_ort_qdq(info.path, outputs.scales, sample, ort_path, nodes_to_exclude=head,
                                    weight_storage=cfg.ort_weights)
    outputs.float_layers = list(head)
    if cfg.accuracy_budget is not None:
        with timings.measure("accuracy_budget"):
            outputs.mixed_precision = _budget_search(cfg, info, calib, outputs, ort_path, smallest)
        outputs.float_layers = list(outputs.mixed_precision["excluded_nodes"])
        with timings.measure("qdq_onnxruntime"):
            ort_summary = write_ort_qdq(info.path, outputs.scales, sample, ort_path,
                                        nodes_to_exclude=outputs.float_layers, weight_storage=cfg.ort_weights)
    with timings.measure("qdq_tensorrt"):
        trt_summary = write_trt_qdq(info.path, cache_file, outputs.scales, sample, staging / "model.int8.onnx",
                                    nodes_to_exclude=outputs.float_layers)
    if outputs.mixed_precision is not None:
        with timings.measure("accuracy_budget"):
            # what TensorRT would run (its Q/DQ placement quantizes fewer tensors), here through ONNX Runtime
            trt_map = _map50_95(cfg, info, trt_summary.path)
        outputs.mixed_precision["map_tensorrt_layout"] = trt_map
        outputs.mixed_precision["delta_tensorrt_layout"] = 100.0 * (outputs.mixed_precision["map_fp32"] - trt_map)
    outputs.staged["qdq_trt"] = trt_summary.path
    outputs.staged["qdq_ort"] = ort_summary.path
    for summary in (trt_summary, ort_summary):
        outputs.qdq[summary.path.name] = {"layout": summary.layout, "activation_tensors": summary.activation_tensors,
                                          "matched_scales": summary.matched_scales,
                                          "per_channel_weights": summary.per_channel_weights,
                                          "per_tensor_weights": summary.per_tensor_weights,
                                          "float_layers": len(summary.excluded_nodes)}
    outputs.qdq[ort_summary.path.name]["weight_storage"] = ort_summary.weight_storage
    if cfg.agreement_images == 0:
        return
    with timings.measure("agreement"):
        limit = -(-cfg.agreement_images // smallest) * smallest  # whole batches for a fixed batch size
        agreement = compare(OnnxrtRunner(info.path), OnnxrtRunner(ort_summary.path), _first_images(calib, limit))
        # The TensorRT-layout model must run in ONNX Runtime too; one batch shows it does and how close it is.
        trt_check = compare(OnnxrtRunner(info.path), OnnxrtRunner(trt_summary.path), sample)
    outputs.agreement = {"model": ort_summary.path.name, "runtime": "onnxruntime", **agreement.to_dict()}
    outputs.qdq[trt_summary.path.name]["onnxruntime_check"] = trt_check.to_dict()


def _map50_95(cfg: VisionConfig, info: ModelInfo, model: Path) -> float:
    """mAP50-95 of ``model`` on the first ``cfg.budget_max_images`` images of ``cfg.data``."""
    from vision.backends import load_runner
    from vision.evaluation.evaluate import evaluate
    from vision.model import resolve_input_hw

    assert cfg.data is not None and cfg.annotations is not None
    hw = resolve_input_hw(info, cfg.imgsz)
    with load_runner(model) as runner:
        return float(evaluate(runner, cfg.data, cfg.annotations, max_images=cfg.budget_max_images,
                              imgsz=hw[0], class_map=cfg.class_map).map50_95)


def _budget_search(cfg: VisionConfig, info: ModelInfo, calib: CalibrationSet, outputs: Int8Outputs,
                   int8_path: Path, smallest: int) -> dict[str, Any]:
    """Keep the most damaging layers in float until FP32 - INT8 mAP50-95 on ``cfg.data`` is within the budget.

    A budget that cannot be met is not an error: the best set tried is written and reported with ``met: false``
    (the artifacts are still the most accurate INT8 found; the caller decides whether that is good enough).
    """
    from vision.evaluation.sensitivity import budgeted_mixed_precision

    assert cfg.data is not None and cfg.annotations is not None and cfg.accuracy_budget is not None
    data, annotations = cfg.data, cfg.annotations

    def map50_95(model: Path) -> float:
        return _map50_95(cfg, info, model)

    mixed_path = int8_path.with_name("model.int8.mixed.ort.onnx")
    feeds = list(_first_images(calib, max(cfg.sensitivity_images, smallest)))
    result = budgeted_mixed_precision(info.path, int8_path, outputs.scales, feeds, map50_95, cfg.accuracy_budget,
                                      mixed_path, keep_head=cfg.keep_head_fp32, int8_keeps_head=True,
                                      weight_storage=cfg.ort_weights)
    mixed_path.unlink(missing_ok=True)  # rewritten as model.int8.ort.onnx by the caller
    search = result.search
    return {"budget": search.budget, "met": search.met, "excluded_nodes": search.excluded,
            "head_nodes": search.trials[0].get("head_fp32", 0), "map_fp32": result.fp32_map50_95,
            "map_int8": result.int8_map50_95, "map_mixed": result.mixed_map50_95, "delta": search.delta,
            "images": cfg.budget_max_images, "data": str(data), "annotations": str(annotations),
            "trials": search.trials, "layer_errors": [e.to_dict() for e in result.layer_errors[:20]]}


def build_trt_engine(cfg: VisionConfig, info: ModelInfo, hw: tuple[int, int], staging: Path,
                     int8: Int8Outputs | None) -> dict[str, Any]:
    """``model.<precision>.engine`` + timing cache with TensorRT (implicit calibrators on ≤10.x, Q/DQ on 11+)."""
    from vision.backends.trt import (
        CalibrationFeed,
        EngineSpec,
        build_engine,
        choose_int8_mode,
        import_tensorrt,
        make_calibrator,
    )

    trt = import_tensorrt()
    mode = choose_int8_mode(trt.__version__, None if cfg.trt_int8 == "auto" else cfg.trt_int8)
    spec = EngineSpec(onnx_path=(staging / "model.int8.onnx") if cfg.precision == "int8" and mode == "explicit"
                      else info.path, engine_path=staging / f"model.{cfg.precision}.engine",
                      precision=cfg.precision, input_name=info.input_name, input_hw=hw,
                      dynamic_batch=info.fixed_batch is None, opt_batch=min(cfg.max_batch, 8),
                      max_batch=cfg.max_batch, fixed_batch=info.fixed_batch or 1,
                      dynamic_hw=info.fixed_hw is None, workspace_gb=cfg.workspace_gb,
                      timing_cache_path=staging / "model.timing.cache", int8_mode=mode,
                      float_layers=tuple(int8.float_layers) if int8 is not None else ())
    calibrator = None
    if cfg.precision == "int8" and mode == "implicit":
        if int8 is None:
            raise QuantError("implicit INT8 needs the calibration cache", "run the INT8 stages first")
        calib = int8.calib
        # TensorRT reads our cache (header checked) and skips its own calibration; the batches are there
        # should it calibrate anyway.
        feed = CalibrationFeed(calib or [], calib.batch if calib else 1, staging / "calibration.cache", int8.header)
        calibrator = make_calibrator(feed, int8.header.rsplit("-", 1)[-1])
    facts = build_engine(spec, calibrator)
    if int8 is not None and int8.calib is not None and cfg.agreement_images:
        from vision.evaluation.agreement import compare
        from vision.backends.onnxrt import OnnxrtRunner
        from vision.backends.trt import TrtRunner

        batches = int8.calib.iter_batches(limit_images=max(cfg.agreement_images, int8.calib.batch), progress=False)
        facts["agreement"] = compare(OnnxrtRunner(info.path), TrtRunner(spec.engine_path), batches).to_dict()
    return facts
