"""`build --accuracy-budget`: the region search (``vision.pipeline.mixed_precision``) on each CPU layout the build
writes, each measured on its own runtime, and the TensorRT layout's float regions derived from ONNX Runtime's.

ONNX Runtime (``model.int8.ort.onnx``) is the reference: its search is always run and its float regions go to the
TensorRT layout too (TensorRT cannot run here; the regions are whole blocks, as its fusion wants, and run in the
TensorRT layout's high-precision type). Where OpenVINO is installed, ``model.int8.ov.onnx`` gets its own search
under OpenVINO. Everything measured (FP32 on each runtime, the uniform INT8 models, every candidate) is timed in one
interleaved loop, and build.json records the Pareto verdict beside the choice.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from quant_common.errors import is_importable
from vision.artifacts.qdq_ort import write_ort_qdq
from vision.artifacts.qdq_ov import write_openvino_qdq
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.select import load_runner
from vision.config import VisionConfig
from vision.data.images import CalibrationSet
from vision.evaluation.bench import interleaved_latency
from vision.evaluation.evaluate import EvalResult, evaluate
from vision.model import ModelInfo, resolve_input_hw
from vision.pipeline.mixed_precision import (
    Candidate,
    Measured,
    RegionSearch,
    Target,
    choose,
    map_loss,
    recommend,
    search_regions,
)
from vision.regions import count_by_region, float_regions, isolated_float_layers

RUNTIME_LABEL = {"onnxruntime": "ORT", "openvino": "OpenVINO"}
TIMING_ROUNDS = 10  # interleaved inferences per model for the latencies the choice is made on


def budget_evaluation(cfg: VisionConfig, info: ModelInfo, model_file: Path, backend: str = "onnxruntime"
                      ) -> EvalResult:
    """``model_file`` run by ``backend`` on the first ``cfg.budget_max_images`` images of ``cfg.data``."""
    assert cfg.data is not None and cfg.annotations is not None
    hw = resolve_input_hw(info, cfg.imgsz)
    with load_runner(model_file, backend, threads=None) as runner:
        return evaluate(runner, cfg.data, cfg.annotations, max_images=cfg.budget_max_images, imgsz=hw[0],
                        class_map=cfg.class_map)


def build_targets(cfg: VisionConfig, model: onnx.ModelProto, scales: Mapping[str, float],
                  sample: Sequence[Mapping[str, Any]]) -> dict[str, Target]:
    """The layouts searched: ONNX Runtime's always, OpenVINO's where OpenVINO is installed."""
    targets = {"onnxruntime": Target("onnxruntime", "ort", lambda nodes, path: write_ort_qdq(
        model, scales, sample, path, nodes_to_exclude=nodes, weight_storage=cfg.ort_weights))}
    if is_importable("openvino"):
        targets["openvino"] = Target("openvino", "ov", lambda nodes, path: write_openvino_qdq(
            model, scales, path, nodes_to_exclude=nodes, weight_bits=cfg.ov_weight_bits))
    return targets


def build_budget_search(cfg: VisionConfig, info: ModelInfo, model: onnx.ModelProto, calib: CalibrationSet,
                        scales: Mapping[str, float], uniform: Mapping[str, Path], head: Sequence[str],
                        smallest: int, staging: Path) -> tuple[dict[str, Any], EvalResult]:
    """Search each runtime's float regions; ``uniform`` maps runtime -> the uniform INT8 model (``head`` float).

    Returns build.json's ``mixed_precision``: the ONNX Runtime search at the top level (``excluded_nodes`` are its
    float nodes, which the TensorRT layout takes as well), ``openvino`` the same for OpenVINO, ``recommendation``
    the Pareto verdict; and FP32's evaluation on the budget images (for further paired differences). A candidate
    meets the budget under ``cfg.budget_rule`` (``vision.pipeline.mixed_precision.RegionSearch.within``). A budget
    that cannot be met is not an error: the most accurate candidate is kept and ``met`` is false."""
    assert cfg.data is not None and cfg.annotations is not None and cfg.accuracy_budget is not None
    feeds = list(calib.first_images(max(cfg.sensitivity_images, smallest)))
    with OnnxrtRunner(model) as runner:
        reference = [runner.infer(dict(f)) for f in feeds]
    regions = float_regions(model, head)
    hw = resolve_input_hw(info, cfg.imgsz)
    fp32 = {runtime: budget_evaluation(cfg, info, info.path, runtime) for runtime in uniform}
    searches: dict[str, RegionSearch] = {}
    with tempfile.TemporaryDirectory(prefix=".mixed-", dir=staging) as tmp:
        for runtime, target in build_targets(cfg, model, scales, feeds[:1]).items():
            if runtime not in uniform:
                continue
            def score(path: Path, rt: str = runtime) -> EvalResult:
                return budget_evaluation(cfg, info, path, rt)

            searches[runtime] = search_regions(target, regions, head, uniform[runtime], score(uniform[runtime]),
                                               info.path, fp32["onnxruntime"], score, cfg.accuracy_budget, Path(tmp),
                                               reference, feeds, imgsz=hw[0], rule=cfg.budget_rule,
                                               resamples=cfg.bootstrap_resamples)
        timed = [(info.path, runtime) for runtime in searches] + [
            (c.path, runtime) for runtime, s in searches.items() for c in s.candidates]
        runners = [load_runner(path, runtime, threads=None) for path, runtime in timed]
        try:
            latencies = interleaved_latency(runners, rounds=TIMING_ROUNDS, imgsz=hw[0])
        finally:
            for runner in runners:
                runner.deactivate()
        points, k = [], len(searches)
        for runtime, latency in zip(searches, latencies, strict=False):
            loss = map_loss(fp32["onnxruntime"], fp32[runtime], cfg.bootstrap_resamples)
            points.append(Measured(f"FP32 ({RUNTIME_LABEL[runtime]})", -loss.value, latency, loss_upper=loss.ci95[1]))
        for runtime, search in searches.items():
            for i, candidate in enumerate(search.candidates):
                candidate.latency_ms, k = latencies[k], k + 1
                label = "uniform" if i == 0 else f"candidate {i}"
                points.append(Measured(f"INT8 {label} ({RUNTIME_LABEL[runtime]})", -candidate.delta,
                                       candidate.latency_ms, row=i == 0, loss_upper=_upper(candidate)))
            best = choose(search)
            points.append(Measured(f"INT8-mixed ({RUNTIME_LABEL[runtime]})", -best.delta, best.latency_ms,
                                   loss_upper=_upper(best)))
            # the chosen file replaces the uniform one (the caller rewrites the layout with these float nodes)
    mixed_rows = {f"INT8-mixed ({RUNTIME_LABEL[r]})": s.best.regions for r, s in searches.items()}
    verdict = recommend(points, cfg.accuracy_budget, mixed_rows, cfg.budget_rule)
    ort = searches["onnxruntime"]
    best = ort.best
    record: dict[str, Any] = {
        "budget": cfg.accuracy_budget, "met": ort.met, "rule": cfg.budget_rule, "excluded_nodes": best.float_nodes,
        "head_nodes": len(head),
        "float_regions": best.regions, "float_by_region": count_by_region(best.float_nodes, regions, head),
        "map_fp32": fp32["onnxruntime"].map50_95, "map_int8": ort.candidates[0].map50_95, "map_mixed": best.map50_95,
        "delta": best.delta, "delta_map_ci95": best.ci95, "latency_ms": best.latency_ms,
        "images": fp32["onnxruntime"].images, "max_images": cfg.budget_max_images,
        "bootstrap": {"units": "images", "resamples": cfg.bootstrap_resamples, "seed": 0}, "data": str(cfg.data),
        "annotations": str(cfg.annotations), "trials": ort.trials, "search": ort.to_dict(),
        "regions": [{"name": r.name, "layers": r.layers, "nodes": len(r.nodes)} for r in regions],
        "recommendation": verdict,
        "tensorrt": {"float_regions": best.regions,
                     "isolated_float_layers": isolated_float_layers(model, best.float_nodes)},
    }
    if "openvino" in searches:
        ov = searches["openvino"]
        record["openvino"] = {"met": ov.met, "excluded_nodes": ov.best.float_nodes, "float_regions": ov.best.regions,
                              "float_by_region": count_by_region(ov.best.float_nodes, regions, head),
                              "map_fp32": fp32["openvino"].map50_95, "map_int8": ov.candidates[0].map50_95,
                              "map_mixed": ov.best.map50_95, "delta": ov.best.delta,
                              "delta_map_ci95": ov.best.ci95,
                              "latency_ms": ov.best.latency_ms, "search": ov.to_dict()}
    return record, fp32["onnxruntime"]


def _upper(candidate: Candidate) -> float | None:
    return candidate.loss.ci95[1] if candidate.loss is not None else None
