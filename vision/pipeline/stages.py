"""The INT8 stages of `build`: calibration data → statistics → calibration cache → three Q/DQ models → agreement,
and the engine step and its agreement where the backend builds one. Artifacts go to a staging directory;
``vision.pipeline.build`` publishes them. The model arrives loaded and is passed down, never read again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quant_common.errors import QuantError, is_importable
from quant_common.manifest import Timings
from quant_common.stability import scale_spread
from vision.artifacts.cache import (
    CacheProvenance,
    CalibrationCache,
    amax_to_scale,
    check_reusable,
    data_fingerprint,
    load_for_tensorrt,
    make_header,
    sidecar_path,
    trt_version_code,
    version_from_code,
    write_cache,
)
from vision.artifacts.qdq_ort import write_ort_qdq
from vision.artifacts.qdq_ov import write_openvino_qdq
from vision.artifacts.qdq_trt import trt_float_dtype, write_trt_qdq
from vision.artifacts.qdq_verify import QdqSummary, check_loads_in_onnxruntime
from vision.backends.engine import EngineRequest, EngineResult
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.openvino import OpenvinoRunner
from vision.backends.select import BuildBackend, load_runner
from vision.backends.upstream import tensorrt_facts
from vision.calibration.calibrators import calibrator_spec, compute_all
from vision.calibration.stats import ActivationCollector, save_stats
from vision.config import VisionConfig
from vision.data.images import CalibrationSet
from vision.data.synthetic import generate_calibration_images
from vision.evaluation.agreement import compare as compare_outputs
from vision.graph import head_nodes, quantizable_tensors
from vision.model import ModelInfo
from vision.model_prep import cast_io
from vision.pipeline.budget import budget_evaluation, build_budget_search
from vision.pipeline.mixed_precision import map_loss


@dataclass
class Int8Facts:
    """What the INT8 stages report: ``BuildResult.int8`` and the matching keys of the ``--json`` summary."""

    calibrator: str
    calibrator_options: dict[str, Any]
    cache_reused: bool = False
    images: int = 0
    skipped_images: dict[str, str] = field(default_factory=dict)
    agreement: dict[str, Any] | None = None
    qdq: dict[str, Any] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)  # ONNX nodes kept out of INT8 (head, budget)
    # how many calibration images the source held, the seeded subset took and calibration actually consumed
    calibration_images: dict[str, Any] = field(default_factory=dict)
    stability: dict[str, Any] | None = None  # --calib-stability: amax spread over subsets (quant_common.stability)
    mixed_precision: dict[str, Any] | None = None  # the --accuracy-budget search, when asked for


@dataclass
class Int8Outputs:
    """The INT8 stages' facts, staged files and build.json sections, and what the engine step needs."""

    facts: Int8Facts
    calib: CalibrationSet  # fed to TensorRT's calibrator should it calibrate itself
    header: str
    scales: dict[str, float]
    staged: dict[str, Path] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)


def calibration_source(cfg: VisionConfig, staging: Path) -> tuple[Path, str]:
    """The image source and how it was obtained (given by the user, or generated offline)."""
    if cfg.calib_data is not None:
        if not cfg.calib_data.exists():
            raise QuantError(f"calibration data not found: {cfg.calib_data}",
                             "pass a directory of images or a text file listing them")
        return cfg.calib_data, "given"
    target = staging / "synthetic-calibration"
    generate_calibration_images(target, cfg.synthetic_calib_images, cfg.seed)
    return target, f"synthetic(n={cfg.synthetic_calib_images}, seed={cfg.seed})"


def quantize_int8(cfg: VisionConfig, info: ModelInfo, model: onnx.ModelProto, hw: tuple[int, int], batch: int,
                  staging: Path, timings: Timings, trt_version: str, *, io_dtype: str = "float32",
                  half: bool = False, raw_head: str | None = None, tail_nodes: tuple[str, ...] = ()) -> Int8Outputs:
    """``model``: the prepared model (``vision.model_prep``: FP32, opset >= 13); ``io_dtype``: the user's model's
    I/O type, which both Q/DQ models take and return; ``half``: the user's model computes in FP16. An end-to-end
    export (``vision.export_kinds.end_to_end_tail``): ``raw_head`` is the head output before its NMS, ``tail_nodes``
    what follows it; calibration stops at the raw head and the tail stays float."""
    spec = calibrator_spec(cfg.calibrator)
    trt_version = version_from_code(trt_version_code(trt_version))  # "10.13" and "10.13.0" are one cache
    source, origin = calibration_source(cfg, staging)
    calib = CalibrationSet.from_source(source, info.input_name, hw, batch, max_images=cfg.max_calib_images,
                                       seed=cfg.seed, fixed_batch=info.fixed_batch is not None,
                                       dtype=info.input_dtype)
    # Every tensor a TensorRT cache lists. The ORT layout's activations are among them (a tensor outside this set
    # is not computed from the image, and write_ort_qdq leaves its nodes in float), so one set of scales serves all.
    tensors = quantizable_tensors(model)
    if tail_nodes:
        after_head = {out for node in model.graph.node if node.name in set(tail_nodes) for out in node.output}
        tensors = [name for name in tensors if name not in after_head]
    # What changes the statistics. The image subset (max_calib_images, seed) is in the data fingerprint already;
    # the batch matters only for TensorRT's growing histogram (ours is independent of batch and order).
    options: dict[str, Any] = {**spec.options_from(cfg), "histogram": cfg.histogram, "num_bins": cfg.num_bins,
                               "imgsz": list(hw)}
    if cfg.histogram == "trt":
        options["batch"] = batch
    expected = CacheProvenance(model_sha256=info.sha256, data_fingerprint=data_fingerprint(calib.paths, options),
                               calibrator=cfg.calibrator, options=options, trt_version=trt_version)
    header = make_header(trt_version, spec.trt_algorithm)
    cache = check_reusable(cfg.cache_path, expected, tensors, force=cfg.force)
    if cfg.calib_stability:
        cache = None  # the stability report needs the statistics pass (same data and options: the same scales)
    facts = Int8Facts(calibrator=cfg.calibrator, calibrator_options=options)
    stats = None
    if cache is None:
        with timings.measure("statistics"), ActivationCollector(model, tensors, histogram=cfg.histogram,
                                                                 num_bins=cfg.num_bins, subsets=cfg.calib_stability,
                                                                 seed=cfg.seed) as collector:
            for feeds in calib:
                collector.collect(feeds)
            stats = collector.result()
            subset_stats = collector.subset_results() if cfg.calib_stability else []
            subset_samples = [n for n in collector.subset_samples if n]
        with timings.measure("calibrate"):
            amax = compute_all(stats, cfg.calibrator, **spec.options_from(cfg))
        if subset_stats:
            with timings.measure("calib_stability"):
                facts.stability = scale_spread(
                    amax, [compute_all(sub, cfg.calibrator, **spec.options_from(cfg)) for sub in subset_stats],
                    subset_samples, cfg.stability_threshold).to_dict()
        cache = CalibrationCache(header, {name: amax_to_scale(value) for name, value in amax.items()})
        facts.images, facts.skipped_images = calib.images_seen, dict(calib.skipped)
    else:
        facts.cache_reused = True
        facts.images = len(calib.paths)
    unreadable = sum(1 for path in calib.paths if str(path) in facts.skipped_images)
    facts.calibration_images = {"found": calib.found, "max_images": cfg.max_calib_images,
                                "selected": len(calib.paths), "used": facts.images, "unreadable": unreadable,
                                "listed_missing": len(facts.skipped_images) - unreadable}
    outputs = Int8Outputs(facts, calib, cache.header, {name: float(scale) for name, scale in cache.scales.items()})
    cache_file = staging / "calibration.cache"
    write_cache(cache_file, cache, provenance=expected)
    outputs.staged["cache"] = cache_file
    outputs.staged["cache_provenance"] = sidecar_path(cache_file)
    if stats is not None and cfg.save_stats is not None:
        save_stats(staging / "stats.npz", stats)
        outputs.staged["stats"] = staging / "stats.npz"

    _write_qdq(cfg, info, model, cache_file, outputs, staging, timings, io_dtype, half, raw_head, tail_nodes,
               trt_version=trt_version)
    outputs.manifest = {
        "calibration": {"source": str(source), "origin": origin, "images": len(calib.paths),
                        "images_used": facts.images, "images_found": calib.found,
                        "max_images": cfg.max_calib_images, "skipped": facts.skipped_images,
                        "stability": facts.stability,
                        "fingerprint": expected.data_fingerprint, "batch": batch, "imgsz": list(hw)},
        "calibrator": {"method": cfg.calibrator, "options": options, "cache_header": cache.header,
                       "cache_reused": facts.cache_reused},
        "amax": cache.amax(),
        "qdq": facts.qdq, "agreement": facts.agreement,
        "float_layers": facts.float_layers,
    }
    if facts.mixed_precision is not None:
        outputs.manifest["mixed_precision"] = facts.mixed_precision
    return outputs


def _qdq_facts(summary: QdqSummary) -> dict[str, Any]:
    return {"layout": summary.layout, "activation_tensors": summary.activation_tensors,
            "matched_scales": summary.matched_scales, "per_channel_weights": summary.per_channel_weights,
            "per_tensor_weights": summary.per_tensor_weights, "float_layers": len(summary.excluded_nodes),
            "io_dtype": summary.io_dtype, "high_precision_dtype": summary.high_precision_dtype}


def _write_qdq(cfg: VisionConfig, info: ModelInfo, model: onnx.ModelProto, cache_file: Path, outputs: Int8Outputs,
               staging: Path, timings: Timings, io_dtype: str, half: bool, raw_head: str | None,
               tail_nodes: tuple[str, ...], *, trt_version: str) -> None:
    facts, calib, scales = outputs.facts, outputs.calib, outputs.scales
    fp16_target = tensorrt_facts().qdq_high_precision(trt_version) == "fp16"
    # One image (one batch for a fixed batch size) is enough: both writers' own calibration is overridden.
    smallest = calib.batch if calib.fixed_batch else 1
    sample = list(calib.first_images(smallest))
    head = head_nodes(model, [raw_head] if raw_head else None) if cfg.keep_head_fp32 else []
    head = list(dict.fromkeys([*head, *tail_nodes]))  # an end-to-end tail (NMS and its decode) is never INT8
    ort_path, ov_path = staging / "model.int8.ort.onnx", staging / "model.int8.ov.onnx"
    with timings.measure("qdq_onnxruntime"):
        ort_summary = write_ort_qdq(model, scales, sample, ort_path, nodes_to_exclude=head,
                                    weight_storage=cfg.ort_weights, label=info.path.name)
    facts.float_layers = list(head)
    ov_float = list(head)
    if cfg.accuracy_budget is not None:
        # the uniform OpenVINO model too: each CPU layout gets its own search on its own runtime
        ov_summary = write_openvino_qdq(model, scales, ov_path, nodes_to_exclude=head,
                                        weight_bits=cfg.ov_weight_bits, label=info.path.name)
        uniform = {"onnxruntime": ort_path, **({"openvino": ov_path} if is_importable("openvino") else {})}
        with timings.measure("accuracy_budget"):
            facts.mixed_precision, fp32_eval = build_budget_search(cfg, info, model, calib, scales, uniform, head,
                                                                    smallest, staging)
        facts.float_layers = list(facts.mixed_precision["excluded_nodes"])
        ov_float = list(facts.mixed_precision.get("openvino", {}).get("excluded_nodes", facts.float_layers))
        with timings.measure("qdq_onnxruntime"):
            ort_summary = write_ort_qdq(model, scales, sample, ort_path, nodes_to_exclude=facts.float_layers,
                                        weight_storage=cfg.ort_weights, label=info.path.name)
    with timings.measure("qdq_tensorrt"):
        trt_summary = write_trt_qdq(info.path, cache_file, scales, sample, staging / "model.int8.onnx",
                                    nodes_to_exclude=facts.float_layers,
                                    high_precision_dtype=trt_float_dtype(cfg.trt_high_precision, trt_version,
                                                                         half=half))
    if facts.mixed_precision is not None:
        with timings.measure("accuracy_budget"):
            # what TensorRT would run (its Q/DQ placement quantizes fewer tensors), here through ONNX Runtime
            trt_eval = budget_evaluation(cfg, info, trt_summary.path)
            trt_loss = map_loss(fp32_eval, trt_eval, cfg.bootstrap_resamples)
        facts.mixed_precision["map_tensorrt_layout"] = trt_eval.map50_95
        facts.mixed_precision["delta_tensorrt_layout"] = trt_loss.value
        facts.mixed_precision["delta_tensorrt_layout_ci95"] = trt_loss.ci_list()
        # the TensorRT layout takes the ONNX Runtime search's regions (whole blocks: TensorRT fuses Q/DQ around
        # Conv-BN-SiLU, a float island between INT8 layers costs two reformats) in its high-precision type
        facts.mixed_precision["tensorrt"].update(
            float_dtype=trt_summary.high_precision_dtype, target_runs_fp16=fp16_target,
            note="the target runs FP16 but the float regions are FP32 (--trt-high-precision fp32)"
            if fp16_target and trt_summary.high_precision_dtype == "float32" else None)
    # OpenVINO layout (vision.artifacts.qdq_ov): same scales, Q/DQ on Conv inputs/weights only, uint8 activations
    with timings.measure("qdq_openvino"):
        ov_summary = write_openvino_qdq(model, scales, ov_path, nodes_to_exclude=ov_float,
                                        weight_bits=cfg.ov_weight_bits, label=info.path.name)
    for summary in (trt_summary, ort_summary, ov_summary):
        summary.io_dtype = io_dtype
        if io_dtype != "float32":  # the user's I/O type at the boundaries; inside, the calibrated FP32 graph
            onnx.save(cast_io(onnx.load(str(summary.path)), io_dtype), str(summary.path))
        check_loads_in_onnxruntime(summary.path, summary.layout)
    outputs.staged["qdq_ov"] = ov_summary.path
    outputs.staged["qdq_trt"] = trt_summary.path
    outputs.staged["qdq_ort"] = ort_summary.path
    for summary in (trt_summary, ort_summary, ov_summary):
        facts.qdq[summary.path.name] = _qdq_facts(summary)
    facts.qdq[ort_summary.path.name]["weight_storage"] = ort_summary.weight_storage
    facts.qdq[ov_summary.path.name]["weight_storage"] = ov_summary.weight_storage
    # what the target TensorRT could run between Q/DQ (VisionConfig.trt_high_precision)
    if trt_summary.fp16_casts_added:
        facts.qdq[trt_summary.path.name]["fp16_casts_added"] = trt_summary.fp16_casts_added
    facts.qdq[trt_summary.path.name]["target_high_precision"] = "float16" if fp16_target else "float32"
    if cfg.agreement_images == 0:
        return
    with timings.measure("agreement"):
        limit = -(-cfg.agreement_images // smallest) * smallest  # whole batches for a fixed batch size
        agreement = compare_outputs(OnnxrtRunner(model), OnnxrtRunner(ort_summary.path), calib.first_images(limit))
        # The TensorRT-layout model must run in ONNX Runtime too; one batch shows it does and how close it is
        # (FP16 float parts: emulated in FP32 arithmetic, ONNX Runtime's CPU FP16 kernels are not TensorRT's).
        trt_runner = OnnxrtRunner(trt_summary.path)
        trt_check = compare_outputs(OnnxrtRunner(model), trt_runner, sample)
    facts.agreement = {"model": ort_summary.path.name, "runtime": "onnxruntime", **agreement.to_dict()}
    facts.qdq[trt_summary.path.name]["onnxruntime_check"] = {"runtime": trt_runner.backend, **trt_check.to_dict()}
    facts.qdq[ov_summary.path.name]["openvino_check"] = _openvino_agreement(
        model, ov_summary.path, calib.first_images(limit), timings)


def _openvino_agreement(model: onnx.ModelProto, ov_model: Path, batches: Iterable[Mapping[str, np.ndarray]],
                        timings: Timings) -> dict[str, Any]:
    """FP32 under ONNX Runtime (the reference) vs the OpenVINO layout under OpenVINO; a note where it is missing."""
    if not is_importable("openvino"):
        return {"skipped": "openvino is not installed (pip install openvino)"}
    with timings.measure("agreement_openvino"):
        check = compare_outputs(OnnxrtRunner(model), OpenvinoRunner(ov_model), batches)
    return {"runtime": "openvino", "precision_hint": "f32", **check.to_dict()}


def engine_stage(cfg: VisionConfig, backend: BuildBackend, info: ModelInfo, model: onnx.ModelProto,
                 hw: tuple[int, int], staging: Path, int8: Int8Outputs | None) -> EngineResult | None:
    """The backend's engine (None where it runs the ONNX models themselves), checked against FP32 on the
    calibration images when they are at hand."""
    request = EngineRequest(model=info, input_hw=hw, precision=cfg.precision, out_dir=staging,
                            int8_mode=cfg.trt_int8, workspace_gb=cfg.workspace_gb, max_batch=cfg.max_batch,
                            qdq_model=int8.staged["qdq_trt"] if int8 is not None else None,
                            cache=load_for_tensorrt(int8.staged["cache"], int8.header) if int8 is not None else None,
                            cache_header=int8.header if int8 is not None else "",
                            calibration=int8.calib if int8 is not None else None,
                            float_layers=tuple(int8.facts.float_layers) if int8 is not None else ())
    engine = backend.build_engine(request)
    if engine is not None and int8 is not None and cfg.agreement_images:
        batches = int8.calib.iter_batches(limit_images=max(cfg.agreement_images, int8.calib.batch), progress=False)
        engine.facts["agreement"] = compare_outputs(OnnxrtRunner(model), load_runner(engine.path), batches).to_dict()
    return engine
