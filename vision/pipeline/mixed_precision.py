"""Accuracy-budgeted mixed precision: keep the layers that add the most INT8 error in float, as few as the budget
allows.

Layers are ranked by the SQNR they lose (``vision.evaluation.sensitivity.layer_errors``); growing prefixes of the
ranking are kept in float through ``nodes_to_exclude`` of the ONNX Runtime Q/DQ writer (a float layer between INT8
neighbours reads dequantized inputs, its neighbours stay INT8) until the user's accuracy probe is within the budget
(``quant_common.search.search_ranked_prefix``). The detection head's all-anchor part starts in float.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quant_common.errors import QuantError
from quant_common.search import DEFAULT_BUDGET_RULE, PrefixSearch, search_ranked_prefix
from quant_common.uncertainty import DEFAULT_RESAMPLES, Estimate
from vision.artifacts.qdq_ort import write_ort_qdq
from vision.artifacts.qdq_verify import QdqSummary
from vision.artifacts.qdq_weights import WeightStorage
from vision.backends.select import load_runner
from vision.config import VisionConfig
from vision.data.images import CalibrationSet
from vision.evaluation.evaluate import EvalResult, evaluate
from vision.evaluation.map_bootstrap import paired_map_delta
from vision.evaluation.sensitivity import LayerError, layer_errors
from vision.graph import head_nodes, with_activations
from vision.model import ModelInfo, resolve_input_hw


@dataclass
class BudgetSearch:
    """The search as recorded in build.json and compare.json (``delta``: mAP50-95 points below FP32)."""

    budget: float  # mAP50-95 points allowed below FP32
    excluded: list[str]
    delta: float  # measured mAP50-95 points below FP32 with those exclusions
    met: bool
    # {"excluded": prefix length, "delta": points, "delta_map_ci95": [lo, hi] where measured} per probe, baseline first
    trials: list[dict[str, Any]]
    rule: str = DEFAULT_BUDGET_RULE  # how a probe met the budget (quant_common.search.within_budget)
    delta_map_ci95: list[float] | None = None  # the paired 95 % interval of ``delta``

    @classmethod
    def from_prefix_search(cls, search: PrefixSearch) -> BudgetSearch:
        """The shared search's result in this record's terms: its ``loss`` is our ``delta``."""
        trials = [{"excluded": t["excluded"], "delta": t["loss"],
                   **({"delta_map_ci95": t["loss_ci95"]} if "loss_ci95" in t else {})} for t in search.trials]
        return cls(search.budget, list(search.excluded), search.loss, search.met, trials, search.rule,
                   search.loss_ci95)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MixedResult:
    """An accuracy-budgeted INT8 model: which layers stay FP32 and what that measured."""

    model: Path
    fp32_map50_95: float
    int8_map50_95: float  # all layers INT8
    mixed_map50_95: float
    search: BudgetSearch
    layer_errors: list[LayerError]
    fp32_eval: EvalResult | None = None  # FP32 on the budget images (for further paired differences)

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "fp32_map50_95": self.fp32_map50_95, "int8_map50_95": self.int8_map50_95,
                "mixed_map50_95": self.mixed_map50_95, **self.search.to_dict(),
                "layer_errors": [e.to_dict() for e in self.layer_errors[:20]]}


def write_mixed(model: onnx.ModelProto, scales: Mapping[str, float], excluded: Sequence[str],
                sample: Sequence[Mapping[str, np.ndarray]], out_path: Path,
                weight_storage: WeightStorage = "auto") -> QdqSummary:
    """The ONNX Runtime INT8 model with ``excluded`` layers kept in float and their neighbours still INT8."""
    return write_ort_qdq(model, scales, sample, out_path, nodes_to_exclude=excluded, weight_storage=weight_storage)


def map_loss(fp32: EvalResult, candidate: EvalResult, resamples: int = DEFAULT_RESAMPLES) -> Estimate:
    """mAP50-95 points ``candidate`` is below ``fp32`` (positive: worse), with the paired 95 % interval over the
    images both were evaluated on (``vision.evaluation.map_bootstrap``)."""
    if fp32.matches is None or candidate.matches is None:
        raise QuantError("an evaluation without its per-image matching cannot give an interval",
                         "evaluate with vision.evaluation.evaluate")
    return paired_map_delta(fp32.matches, candidate.matches, resamples=resamples).scaled(-1.0)


def budgeted_mixed_precision(fp32: ModelInfo, model: onnx.ModelProto, int8_path: Path, scales: Mapping[str, float],
                             feeds: Sequence[Mapping[str, np.ndarray]], evaluate_map: Callable[[Path], EvalResult],
                             budget: float, out_path: Path, *, fp32_result: EvalResult | None = None,
                             int8_result: EvalResult | None = None, threads: int | None = None, keep_head: bool = True,
                             int8_keeps_head: bool = False, weight_storage: WeightStorage = "auto",
                             rule: str = DEFAULT_BUDGET_RULE, resamples: int = DEFAULT_RESAMPLES) -> MixedResult:
    """Rank layers by added error, then keep a growing prefix in FP32 until ``FP32 mAP - mixed mAP`` meets the
    budget (mAP50-95 points) under ``rule`` (``"ci"``: the upper end of its paired 95 % interval; ``"point"``: the
    measured value); writes the chosen model to ``out_path``.

    ``fp32``/``model``: the FP32 model's file facts and the loaded model. ``evaluate_map(file) -> EvalResult`` is the
    user's accuracy measure (e.g. ``vision.evaluation.evaluate`` on ``--data``); ``int8_path`` is the INT8 model
    made from ``scales`` (all layers, or all but the head when ``int8_keeps_head``). With ``keep_head`` the head's
    all-anchor part (``vision.graph.head_nodes``) stays float from the start. ``vision-quant build
    --accuracy-budget`` and ``vision-quant compare`` both call this.
    """
    fp32_eval = evaluate_map(fp32.path) if fp32_result is None else fp32_result
    int8_eval = evaluate_map(int8_path) if int8_result is None else int8_result
    head = head_nodes(model) if keep_head else []
    ranked = [e for e in layer_errors(model, int8_path, feeds, threads) if e.node not in set(head)]
    results: dict[int, EvalResult] = {}

    def measure(excluded: list[str]) -> Estimate:
        write_mixed(model, scales, [*head, *with_activations(model, excluded)], feeds[:1], out_path, weight_storage)
        results[len(excluded)] = evaluate_map(out_path)
        return map_loss(fp32_eval, results[len(excluded)], resamples)

    if head and not int8_keeps_head:
        baseline = measure([])
    else:
        results[0] = int8_eval
        baseline = map_loss(fp32_eval, int8_eval, resamples)
    search = BudgetSearch.from_prefix_search(search_ranked_prefix([e.node for e in ranked], measure, budget, baseline,
                                                                  rule=rule))
    search.trials[0]["head_fp32"] = len(head)
    chosen = len(search.excluded)
    search.excluded = list(dict.fromkeys([*head, *with_activations(model, search.excluded)]))
    write_mixed(model, scales, search.excluded, feeds[:1], out_path, weight_storage)  # the chosen set
    return MixedResult(out_path, fp32_eval.map50_95, int8_eval.map50_95, results.get(chosen, int8_eval).map50_95,
                       search, ranked, fp32_eval)


def budget_evaluation(cfg: VisionConfig, info: ModelInfo, model_file: Path) -> EvalResult:
    """``model_file`` evaluated on the first ``cfg.budget_max_images`` images of ``cfg.data``."""
    assert cfg.data is not None and cfg.annotations is not None
    hw = resolve_input_hw(info, cfg.imgsz)
    with load_runner(model_file, "onnxruntime") as runner:  # the budget is measured in the reference runtime
        return evaluate(runner, cfg.data, cfg.annotations, max_images=cfg.budget_max_images, imgsz=hw[0],
                        class_map=cfg.class_map)


def map50_95(cfg: VisionConfig, info: ModelInfo, model_file: Path) -> float:
    """mAP50-95 of ``model_file`` on the first ``cfg.budget_max_images`` images of ``cfg.data``."""
    return float(budget_evaluation(cfg, info, model_file).map50_95)


def build_budget_search(cfg: VisionConfig, info: ModelInfo, model: onnx.ModelProto, calib: CalibrationSet,
                        scales: Mapping[str, float], int8_path: Path, smallest: int
                        ) -> tuple[dict[str, Any], EvalResult]:
    """``build --accuracy-budget``: the float layers that bring FP32 - INT8 mAP50-95 on ``cfg.data`` within the
    budget, as build.json records the search, and FP32's evaluation (for further paired differences).

    A budget that cannot be met is not an error: the best set tried is written and reported with ``met: false``
    (the artifacts are still the most accurate INT8 found; the caller decides whether that is good enough).
    """
    assert cfg.data is not None and cfg.annotations is not None and cfg.accuracy_budget is not None
    mixed_path = int8_path.with_name("model.int8.mixed.ort.onnx")
    feeds = list(calib.first_images(max(cfg.sensitivity_images, smallest)))
    result = budgeted_mixed_precision(info, model, int8_path, scales, feeds,
                                      lambda path: budget_evaluation(cfg, info, path), cfg.accuracy_budget,
                                      mixed_path, keep_head=cfg.keep_head_fp32, int8_keeps_head=True,
                                      weight_storage=cfg.ort_weights, rule=cfg.budget_rule,
                                      resamples=cfg.bootstrap_resamples)
    mixed_path.unlink(missing_ok=True)  # rewritten as model.int8.ort.onnx by the caller
    search, fp32_eval = result.search, result.fp32_eval
    assert fp32_eval is not None  # budgeted_mixed_precision always sets it
    return {"budget": search.budget, "met": search.met, "rule": search.rule, "excluded_nodes": search.excluded,
            "head_nodes": search.trials[0].get("head_fp32", 0), "map_fp32": result.fp32_map50_95,
            "map_int8": result.int8_map50_95, "map_mixed": result.mixed_map50_95, "delta": search.delta,
            "delta_map_ci95": search.delta_map_ci95, "images": fp32_eval.images,
            "max_images": cfg.budget_max_images,
            "bootstrap": {"units": "images", "resamples": cfg.bootstrap_resamples, "seed": 0},
            "data": str(cfg.data), "annotations": str(cfg.annotations),
            "trials": search.trials, "layer_errors": [e.to_dict() for e in result.layer_errors[:20]]}, fp32_eval
