"""`compare`: FP32 against INT8 with each calibrator and a mixed-precision INT8, on one labelled set.

One pass of activation statistics over the calibration images serves every calibrator (histograms are computed
once; each calibrator is a pure function of them). Each INT8 variant is the ONNX Runtime layout written by
``vision.artifacts.qdq_ort`` from that calibrator's scales, evaluated with ``vision.evaluation.evaluate`` (COCO mAP);
where OpenVINO is installed, FP32 and the best calibrator's OpenVINO layout run there too. The mixed variants
(``vision.pipeline.mixed_precision``, one per runtime) keep whole regions in float, chosen on the mAP measured on
the labelled set and the latency measured on that runtime. Every row and every candidate the searches measured
are timed in one interleaved loop at the end, and ``recommend`` picks the row to use from the Pareto front.
"""

from __future__ import annotations

import os
import shutil
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
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.select import load_runner
from vision.calibration.calibrators import CALIBRATORS, COMPARED, calibrator_spec, compute_all
from vision.calibration.stats import ActivationCollector, TensorStats
from vision.data.images import CalibrationSet
from vision.evaluation.bench import cpu_flags, cpu_name, interleaved_latency
from vision.evaluation.evaluate import EvalResult, evaluate
from vision.evaluation.map_bootstrap import delta_fields
from vision.evaluation.report import write_reports
from vision.evaluation.results import CompareResult, Variant
from vision.evaluation.sensitivity import layer_errors
from vision.export_kinds import check_supported, end_to_end_tail, export_kind
from vision.graph import head_nodes, quantizable_tensors
from vision.model import ModelInfo, load_model, resolve_input_hw
from vision.model_prep import prepare_model
from vision.pipeline.mixed_precision import (
    Measured,
    RegionSearch,
    Target,
    choose,
    recommend,
    search_regions,
)
from vision.regions import float_regions

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
    sensitivity_images: int = 8  # calibration images for the SQNR ranking and each region's output-SQNR gain
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


def _variant(name: str, calibrator: str | None, model: Path, result: EvalResult, excluded: Sequence[str] = (),
             runtime: str = "onnxruntime", reference: EvalResult | None = None,
             resamples: int = DEFAULT_RESAMPLES) -> Variant:
    """A row; its latency comes from the interleaved timing at the end (``_time_everything``). With ``reference``
    (FP32 on the same images) its Δ intervals, from a paired bootstrap over the images."""
    row = Variant(name=name, calibrator=calibrator, model=model.name, map50_95=result.map50_95, map50=result.map50,
                  runtime=runtime, excluded=list(excluded), per_class=[asdict(c) for c in result.per_class])
    if reference is not None and reference.matches is not None and result.matches is not None:
        deltas = delta_fields(reference.matches, result.matches, resamples=resamples)
        row.delta_map_ci95, row.delta_map50_ci95 = deltas["delta_map_ci95"], deltas["delta_map50_ci95"]
    return row


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
            fp32 = _variant("FP32", None, model_path, fp32_eval, reference=fp32_eval, resamples=opts.resamples)
        with timings.measure("statistics"):
            stats, sample, calib_images = collect_statistics(info, proto, Path(calib_data), opts)
        variants, amax_all, scales_all = [fp32], {}, {}
        evaluated: dict[Path, EvalResult] = {}  # every INT8 model's evaluation, by file
        head = head_nodes(proto, [raw_head] if raw_head else None) if opts.keep_head_fp32 else []
        head = list(dict.fromkeys([*head, *tail]))  # an end-to-end tail (NMS and its decode) stays float
        for method in opts.calibrators:
            with timings.measure(f"int8_{method}"):
                amax = compute_all(stats, method, **calibrator_spec(method).options_from(opts))
                scales = {name: amax_to_scale(value) for name, value in amax.items()}
                path = staging / f"model.int8.{method}.ort.onnx"
                write_ort_qdq(proto, scales, sample[:1], path, nodes_to_exclude=head,
                              weight_storage=opts.ort_weights, label=model_path.name)
                evaluated[path] = _evaluate(path, data_dir, ann_path, opts, progress)
                variants.append(_variant(f"INT8-{method}", method, path, evaluated[path], head, reference=fp32_eval,
                                         resamples=opts.resamples))
                amax_all[method], scales_all[method] = amax, scales
        best = max(variants[1:], key=lambda v: v.map50_95)
        base_scales = scales_all[best.calibrator or ""]
        with timings.measure("openvino"):
            variants += _openvino_variants(proto, model_path, staging, base_scales, best.calibrator, head, data_dir,
                                           ann_path, opts, progress, evaluated, fp32_eval)
        with timings.measure("mixed_precision"):
            ranked = layer_errors(proto, staging / best.model, sample[:opts.sensitivity_images], opts.threads)
            bases = {v.runtime: v for v in variants[::-1] if v.calibrator == best.calibrator}
            searches = _mixed_searches(proto, staging, base_scales, sample, head, bases, fp32_eval, model_path,
                                       data_dir, ann_path, opts, evaluated)
        with timings.measure("latency"):
            _time_everything(variants, searches, model_path, staging, opts)
        mixed_rows = _mixed_variants(searches, best.calibrator, staging, evaluated, fp32_eval, opts.resamples)
        for row in mixed_rows:  # after the last row of its runtime
            last = max(i for i, v in enumerate(variants) if v.runtime == row.runtime)
            variants.insert(last + 1, row)
        for v in variants:
            v.delta_map50_95 = 100.0 * (v.map50_95 - fp32.map50_95)
            v.delta_map50 = 100.0 * (v.map50 - fp32.map50)
            v.speedup = fp32.latency_ms / v.latency_ms if v.latency_ms > 0 else 0.0
        points = [Measured(v.name, v.delta_map50_95, v.latency_ms,
                           loss_upper=-v.delta_map_ci95[0] if v.delta_map_ci95 else None) for v in variants] + [
            Measured(f"{RUNTIME_NAME[rt]} candidate {i}", -c.delta, c.latency_ms, row=False,
                     loss_upper=c.ci95[1] if c.ci95 else None)
            for rt, search in searches.items() for i, c in enumerate(search.candidates) if i]
        verdict = recommend(points, opts.accuracy_budget, {v.name: v.regions for v in mixed_rows}, opts.budget_rule)
        for v in variants:
            v.pareto = v.name in verdict["front"]
        regions = float_regions(proto, head)
        result_obj = CompareResult(
            model=str(model_path), variants=variants, images=fp32_eval.images, calib_images=calib_images,
            amax=amax_all, layer_errors=[e.to_dict() for e in ranked],
            mixed={"base_calibrator": best.calibrator, "budget": opts.accuracy_budget,
                   "regions": [r.to_dict() for r in regions], "head": head,
                   **{rt: s.to_dict() for rt, s in searches.items()}},
            recommendation=verdict, timings=dict(timings),
            device=f"{'onnxruntime + openvino' if any(v.runtime == 'openvino' for v in variants) else 'onnxruntime'}"
                   f" cpu, {cpu_name()}, {' '.join(cpu_flags()) or 'flags unknown'}", created=utc_now())
        with timings.measure("report"):
            reports = write_reports(result_obj, _histograms(stats, amax_all), staging)
        result_obj.timings = dict(timings)
        atomic_write_json(staging / "compare.json", result_obj.to_dict())
        models = dict.fromkeys(staging / v.model for v in variants[1:] if v.model != model_path.name)
        files = [*models, *reports, staging / "compare.json"]  # compare.json last
        published = publish_files({f.name: f for f in files}, out_dir)
        result_obj.artifacts = {name: str(path) for name, path in published.items()}
    return result_obj


RUNTIME_NAME = {"onnxruntime": "ORT", "openvino": "OpenVINO"}


def _mixed_searches(proto: onnx.ModelProto, staging: Path, scales: Mapping[str, float],
                    sample: Sequence[Mapping[str, np.ndarray]], head: Sequence[str], bases: Mapping[str, Variant],
                    fp32: EvalResult, fp32_path: Path, data: Path, annotations: Path, opts: CompareOptions,
                    evaluated: dict[Path, EvalResult]) -> dict[str, RegionSearch]:
    """The region search on each runtime with a uniform INT8 row of the best calibrator (``bases``), from it."""
    feeds = list(sample[:opts.sensitivity_images])
    with OnnxrtRunner(proto, threads=opts.threads) as runner:
        reference = [runner.infer(dict(f)) for f in feeds]
    regions = float_regions(proto, head)
    work = staging / ".candidates"
    work.mkdir(exist_ok=True)
    searches = {}
    for runtime, target in _targets(proto, scales, sample[:1], opts).items():
        if runtime not in bases:
            continue

        def evaluate_map(path: Path, rt: str = runtime) -> EvalResult:
            evaluated[path] = _evaluate(path, data, annotations, opts, None, rt)
            return evaluated[path]

        base = staging / bases[runtime].model
        searches[runtime] = search_regions(target, regions, head, base, evaluated[base], fp32_path, fp32,
                                           evaluate_map, opts.accuracy_budget, work, reference, feeds,
                                           threads=opts.threads, imgsz=opts.imgsz, rule=opts.budget_rule,
                                           resamples=opts.resamples)
    return searches


def _targets(proto: onnx.ModelProto, scales: Mapping[str, float], sample: Sequence[Mapping[str, np.ndarray]],
             opts: CompareOptions) -> dict[str, Target]:
    targets = {"onnxruntime": Target("onnxruntime", "ort", lambda nodes, path: write_ort_qdq(
        proto, scales, sample, path, nodes_to_exclude=nodes, weight_storage=opts.ort_weights))}
    if is_importable("openvino"):
        targets["openvino"] = Target("openvino", "ov", lambda nodes, path: write_openvino_qdq(
            proto, scales, path, nodes_to_exclude=nodes))
    return targets


def _time_everything(variants: Sequence[Variant], searches: Mapping[str, RegionSearch], model_path: Path,
                     staging: Path, opts: CompareOptions) -> None:
    """Every row and every searched candidate timed in one interleaved loop (``interleaved_latency``): the
    Pareto front and the choice compare latencies that the machine's load drifts alike."""
    timed = [(staging / v.model if v.model != model_path.name else model_path, v.runtime) for v in variants]
    timed += [(c.path, rt) for rt, search in searches.items() for c in search.candidates[1:]]
    runners = [load_runner(path, runtime, threads=opts.threads) for path, runtime in timed]
    try:
        latencies = interleaved_latency(runners, rounds=opts.bench_iterations, warmup=opts.bench_warmup,
                                        imgsz=opts.imgsz)
    finally:
        for runner in runners:
            runner.deactivate()
    for v, latency in zip(variants, latencies, strict=False):
        v.latency_ms = latency
    rest = iter(latencies[len(variants):])
    for runtime, search in searches.items():
        uniform = next(v for v in variants if v.runtime == runtime and staging / v.model == search.candidates[0].path)
        search.candidates[0].latency_ms = uniform.latency_ms
        for candidate in search.candidates[1:]:
            candidate.latency_ms = next(rest)


def _mixed_variants(searches: Mapping[str, RegionSearch], calibrator: str | None, staging: Path,
                    evaluated: Mapping[Path, EvalResult], fp32: EvalResult, resamples: int) -> list[Variant]:
    """One INT8-mixed row per searched runtime: its chosen candidate, saved as model.int8.mixed.<layout>.onnx."""
    rows = []
    for runtime, search in searches.items():
        best = choose(search)
        suffix = "ort" if runtime == "onnxruntime" else "ov"
        path = staging / f"model.int8.mixed.{suffix}.onnx"
        shutil.copyfile(best.path, path)
        name = "INT8-mixed" if runtime == "onnxruntime" else "INT8-mixed-openvino"
        row = _variant(name, calibrator, path, evaluated[best.path], best.float_nodes, runtime, fp32, resamples)
        row.latency_ms, row.regions = best.latency_ms, list(best.regions)
        rows.append(row)
    return rows


def _openvino_variants(proto: onnx.ModelProto, model_path: Path, staging: Path, scales: Mapping[str, float],
                       calibrator: str | None, head: Sequence[str], data: Path, annotations: Path,
                       opts: CompareOptions, progress: Progress | None,
                       evaluated: dict[Path, EvalResult], reference: EvalResult) -> list[Variant]:
    """FP32 (f32 hint) and the OpenVINO INT8 layout from the best calibrator's scales, run by OpenVINO; none where
    OpenVINO is not installed (ONNX Runtime stays the reference for every row)."""
    if not is_importable("openvino"):
        return []
    fp32 = _evaluate(model_path, data, annotations, opts, progress, "openvino")
    rows = [_variant("FP32-openvino", None, model_path, fp32, runtime="openvino", reference=reference,
                     resamples=opts.resamples)]
    path = staging / f"model.int8.{calibrator}.ov.onnx"
    write_openvino_qdq(proto, scales, path, nodes_to_exclude=head, label=model_path.name)
    evaluated[path] = _evaluate(path, data, annotations, opts, progress, "openvino")
    rows.append(_variant(f"INT8-{calibrator}-openvino", calibrator, path, evaluated[path], head, "openvino",
                         reference, opts.resamples))
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
