"""`compare`: FP32 against INT8 with each calibrator and a mixed-precision INT8, on one labelled set.

One pass of activation statistics over the calibration images serves every calibrator (histograms are computed
once; each calibrator is a pure function of them). Each INT8 variant is the ONNX Runtime layout written by
``vision.artifacts.qdq_ort`` from that calibrator's scales, evaluated with ``vision.evaluation.evaluate`` (COCO mAP)
and timed with ``vision.evaluation.bench``. The mixed variant keeps the layers that add the most quantization error
(``vision.pipeline.mixed_precision``) in float, as few as the accuracy budget allows, on top of the most accurate
calibrator.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quant_common.atomic import atomic_write_json, publish_files, staging_area
from quant_common.errors import QuantError, is_importable
from quant_common.manifest import Timings, utc_now
from quant_common.search import DEFAULT_BUDGET_RULE
from quant_common.uncertainty import DEFAULT_RESAMPLES
from vision.artifacts.cache import amax_to_scale
from vision.artifacts.qdq_ort import write_ort_qdq
from vision.artifacts.qdq_ov import write_openvino_qdq
from vision.artifacts.qdq_weights import WeightStorage
from vision.backends.select import load_runner
from vision.calibration.calibrators import CALIBRATORS, COMPARED, calibrator_spec, compute_all
from vision.calibration.stats import ActivationCollector, TensorStats
from vision.data.images import CalibrationSet
from vision.evaluation.bench import benchmark, cpu_name
from vision.evaluation.evaluate import EvalResult, evaluate
from vision.evaluation.map_bootstrap import delta_fields
from vision.evaluation.report import write_reports
from vision.evaluation.results import CompareResult, Variant
from vision.export_kinds import check_supported, end_to_end_tail, export_kind
from vision.graph import head_nodes, quantizable_tensors
from vision.model import ModelInfo, load_model, resolve_input_hw
from vision.model_prep import prepare_model
from vision.pipeline.mixed_precision import budgeted_mixed_precision

DEFAULT_CALIBRATORS = COMPARED


@dataclass
class CompareOptions:
    calibrators: Sequence[str] = DEFAULT_CALIBRATORS
    percentile: float = 99.99
    max_calib_images: int | None = 64
    max_images: int | None = None
    accuracy_budget: float = 0.5
    bench_iterations: int = 10
    bench_warmup: int = 3
    sensitivity_images: int = 2
    threads: int | None = None
    class_map: Path | None = None
    seed: int = 0
    imgsz: int = 640
    keep_head_fp32: bool = True  # as `vision-quant build` does by default (vision.graph.head_nodes)
    ort_weights: WeightStorage = "auto"  # vision.artifacts.qdq_weights
    resamples: int = DEFAULT_RESAMPLES  # bootstrap resamples of the images for every Δ's 95 % interval
    budget_rule: str = DEFAULT_BUDGET_RULE  # quant_common.search.BUDGET_RULES


Progress = Callable[[Any, str, int], Any]


def _evaluate(model: Path, data: Path, annotations: Path, opts: CompareOptions,
              progress: Progress | None, backend: str = "onnxruntime") -> EvalResult:
    with load_runner(model, backend, threads=opts.threads) as runner:
        return evaluate(runner, data, annotations, class_map=opts.class_map, max_images=opts.max_images,
                        imgsz=opts.imgsz, progress=progress)


def _latency(model: Path, opts: CompareOptions, backend: str = "onnxruntime") -> float:
    with load_runner(model, backend, threads=opts.threads) as runner:
        result = benchmark(runner, warmup=opts.bench_warmup, iterations=opts.bench_iterations, imgsz=opts.imgsz,
                           threads=opts.threads)
    return float(result.latency_ms["p50"])


def _variant(name: str, calibrator: str | None, model: Path, result: EvalResult, latency: float,
             excluded: Sequence[str] = ()) -> tuple[Variant, EvalResult]:
    """The table row, and the evaluation it came from (its per-image matches give the row's Δ interval)."""
    return Variant(name=name, calibrator=calibrator, model=model.name, map50_95=result.map50_95, map50=result.map50,
                   latency_ms=latency, excluded=list(excluded),
                   per_class=[asdict(c) for c in result.per_class]), result


def collect_statistics(info: ModelInfo, model: onnx.ModelProto, calib_data: Path, opts: CompareOptions,
                       ) -> tuple[dict[str, TensorStats], list[dict[str, np.ndarray]], int]:
    """One statistics pass; returns (stats, a few sample batches, images used)."""
    hw = resolve_input_hw(info, (opts.imgsz, opts.imgsz) if info.fixed_hw is None else None)
    batch = info.fixed_batch or 1
    calib = CalibrationSet.from_source(calib_data, info.input_name, hw, batch, max_images=opts.max_calib_images,
                                       seed=opts.seed, fixed_batch=info.fixed_batch is not None,
                                       dtype=info.input_dtype)
    with ActivationCollector(model, quantizable_tensors(model)) as collector:
        for feeds in calib.iter_batches():
            collector.collect(feeds)
        stats = collector.result()
    used = calib.images_seen  # read before the sample pass below resets it
    sample = list(calib.iter_batches(limit_images=max(opts.sensitivity_images, batch), progress=False))
    return stats, sample, used


def compare(model: str | os.PathLike[str], calib_data: str | os.PathLike[str], data: str | os.PathLike[str],
            annotations: str | os.PathLike[str], out: str | os.PathLike[str], opts: CompareOptions | None = None,
            progress: Progress | None = None) -> CompareResult:
    """Build, evaluate and time FP32 and every INT8 variant; write the models, compare.json and the reports."""
    opts = opts or CompareOptions()
    model_path, out_dir = Path(model), Path(out)
    if not model_path.is_file():
        raise QuantError(f"model file not found: {model_path}", "pass the FP32 ONNX model")
    unknown = [c for c in opts.calibrators if c not in CALIBRATORS]
    if not opts.calibrators or unknown:
        raise QuantError(f"unknown calibrator(s) {', '.join(unknown)}" if unknown else "no calibrators to compare",
                         f"choose from {', '.join(sorted(CALIBRATORS))}")
    if not Path(annotations).is_file():
        raise QuantError(f"annotation file not found: {annotations}", "pass a COCO-format instances json")
    info, proto = load_model(model_path)
    check_supported(export_kind(info, proto), model_path.name)
    timings = Timings()
    data_dir, ann_path = Path(data), Path(annotations)
    with staging_area(out_dir, prefix=".compare-staging-") as staging_dir:
        staging = staging_dir.root
        # FP16 / old-opset exports: calibrate and quantize the FP32, opset>=13 twin (vision.model_prep)
        prepared = prepare_model(info, proto, staging)
        info, proto = prepared.info, prepared.model
        raw_head, tail = end_to_end_tail(proto)
        with timings.measure("fp32"):
            fp32_eval = _evaluate(model_path, data_dir, ann_path, opts, progress)  # checks data before long work
            fp32, _ = _variant("FP32", None, model_path, fp32_eval, _latency(model_path, opts))
        with timings.measure("statistics"):
            stats, sample, calib_images = collect_statistics(info, proto, Path(calib_data), opts)
        variants, amax_all, scales_all = [fp32], {}, {}
        evaluations = [fp32_eval]
        head = head_nodes(proto, [raw_head] if raw_head else None) if opts.keep_head_fp32 else []
        head = list(dict.fromkeys([*head, *tail]))  # an end-to-end tail (NMS and its decode) stays float
        for method in opts.calibrators:
            with timings.measure(f"int8_{method}"):
                amax = compute_all(stats, method, **calibrator_spec(method).options_from(opts))
                scales = {name: amax_to_scale(value) for name, value in amax.items()}
                path = staging / f"model.int8.{method}.ort.onnx"
                write_ort_qdq(proto, scales, sample[:1], path, nodes_to_exclude=head,
                              weight_storage=opts.ort_weights, label=model_path.name)
                result = _evaluate(path, data_dir, ann_path, opts, progress)
                _add(variants, evaluations, _variant(f"INT8-{method}", method, path, result, _latency(path, opts),
                                                     head))
                amax_all[method], scales_all[method] = amax, scales
        best_index = max(range(1, len(variants)), key=lambda i: variants[i].map50_95)
        best = variants[best_index]
        with timings.measure("mixed_precision"):
            mixed = budgeted_mixed_precision(
                info, proto, staging / best.model, scales_all[best.calibrator or ""], sample[:opts.sensitivity_images],
                lambda path: _evaluate(path, data_dir, ann_path, opts, None), opts.accuracy_budget,
                staging / "model.int8.mixed.ort.onnx", fp32_result=fp32_eval, int8_result=evaluations[best_index],
                threads=opts.threads, keep_head=opts.keep_head_fp32, int8_keeps_head=True,
                weight_storage=opts.ort_weights, rule=opts.budget_rule, resamples=opts.resamples)
            mixed_eval = _evaluate(mixed.model, data_dir, ann_path, opts, progress)
            _add(variants, evaluations, _variant("INT8-mixed", best.calibrator, mixed.model, mixed_eval,
                                                 _latency(mixed.model, opts), mixed.search.excluded))
        with timings.measure("openvino"):
            for row in _openvino_variants(proto, model_path, staging, scales_all[best.calibrator or ""],
                                          best.calibrator, head, data_dir, ann_path, opts, progress):
                _add(variants, evaluations, row)
        ranked, search = mixed.layer_errors, mixed.search
        with timings.measure("intervals"):
            for v, evaluation in zip(variants, evaluations, strict=True):
                v.delta_map50_95 = 100.0 * (v.map50_95 - fp32.map50_95)
                v.delta_map50 = 100.0 * (v.map50 - fp32.map50)
                v.speedup = fp32.latency_ms / v.latency_ms if v.latency_ms > 0 else 0.0
                if fp32_eval.matches is not None and evaluation.matches is not None:
                    deltas = delta_fields(fp32_eval.matches, evaluation.matches, resamples=opts.resamples)
                    v.delta_map_ci95, v.delta_map50_ci95 = deltas["delta_map_ci95"], deltas["delta_map50_ci95"]
        result_obj = CompareResult(
            model=str(model_path), variants=variants, images=fp32_eval.images, calib_images=calib_images,
            amax=amax_all, layer_errors=[e.to_dict() for e in ranked],
            mixed={"base_calibrator": best.calibrator, **search.to_dict()}, timings=dict(timings),
            device=f"{'onnxruntime + openvino' if any(v.name.endswith('-openvino') for v in variants) else 'onnxruntime'}"
                   f" cpu, {cpu_name()}", created=utc_now())
        with timings.measure("report"):
            reports = write_reports(result_obj, _histograms(stats, amax_all), staging)
        result_obj.timings = dict(timings)
        atomic_write_json(staging / "compare.json", result_obj.to_dict())
        models = dict.fromkeys(staging / v.model for v in variants[1:] if v.model != model_path.name)
        files = [*models, *reports, staging / "compare.json"]  # compare.json last
        published = publish_files({f.name: f for f in files}, out_dir)
        result_obj.artifacts = {name: str(path) for name, path in published.items()}
    return result_obj


def _add(variants: list[Variant], evaluations: list[EvalResult], row: tuple[Variant, EvalResult]) -> None:
    variants.append(row[0])
    evaluations.append(row[1])


def _openvino_variants(proto: onnx.ModelProto, model_path: Path, staging: Path, scales: Mapping[str, float],
                       calibrator: str | None, head: Sequence[str], data: Path, annotations: Path,
                       opts: CompareOptions, progress: Progress | None) -> list[tuple[Variant, EvalResult]]:
    """FP32 (f32 hint) and the OpenVINO INT8 layout from the best calibrator's scales, run by OpenVINO; none where
    OpenVINO is not installed (ONNX Runtime stays the reference for every row)."""
    if not is_importable("openvino"):
        return []
    fp32 = _evaluate(model_path, data, annotations, opts, progress, "openvino")
    rows = [_variant("FP32-openvino", None, model_path, fp32, _latency(model_path, opts, "openvino"))]
    path = staging / f"model.int8.{calibrator}.ov.onnx"
    write_openvino_qdq(proto, scales, path, nodes_to_exclude=head, label=model_path.name)
    result = _evaluate(path, data, annotations, opts, progress, "openvino")
    rows.append(_variant(f"INT8-{calibrator}-openvino", calibrator, path, result, _latency(path, opts, "openvino"),
                         head))
    return rows


def _histograms(stats: Mapping[str, TensorStats], amax: Mapping[str, Mapping[str, float]],
                limit: int = 6) -> dict[str, TensorStats]:
    """Tensors worth a picture: the image input plus those where the calibrators disagree most."""
    names = [n for n in stats if all(n in a for a in amax.values())]

    def spread(name: str) -> float:
        values = [a[name] for a in amax.values()]
        return max(values) / max(min(values), 1e-12)

    chosen = sorted(names, key=spread, reverse=True)[:limit]
    inputs = [n for n in names if n == "images"]
    return {n: stats[n] for n in dict.fromkeys([*inputs, *chosen]).keys()}
