"""Mixed precision chosen on accuracy and measured latency: whole float regions, priced on the runtime that runs them.

1. The graph is cut into regions (``vision.regions``: modules such as a C2f, a stride-2 Conv with the C2f
   it feeds, one branch of the detection head); the head's all-anchor part is float in every INT8 variant already.
2. Each region is priced once on the target runtime: the INT8 model with that region float is written in the
   target's layout (ONNX Runtime's ``model.int8.ort.onnx`` or OpenVINO's ``model.int8.ov.onnx``), timed round-robin
   against the uniform INT8 model (its extra latency, the *cost*) and run on a few images (the output SQNR against
   FP32 it gains, the *gain*).
3. Regions are ranked by gain per cost (free regions first; none that gains nothing, none that would make the
   model as slow as FP32 on that runtime) and ``quant_common.search.search_ranked_prefix`` keeps the shortest prefix
   of that ranking whose mAP50-95 loss meets the budget under the budget rule (``"ci"``: the upper end of the
   loss's paired 95 % interval over the images; ``"point"``: the measured loss); every prefix it tries is a
   candidate, evaluated on the labelled set on the target runtime.
4. The caller times every candidate with every other variant of the run in one interleaved loop; ``choose`` takes
   the fastest candidate within the budget and ``recommend`` checks it against the accuracy/latency Pareto front of
   everything measured. Where a uniform variant is as fast and as accurate, that one is recommended instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from quant_common.errors import QuantError
from quant_common.search import DEFAULT_BUDGET_RULE, pareto_front, search_ranked_prefix, within_budget
from quant_common.uncertainty import DEFAULT_RESAMPLES, Estimate
from vision.backends.base import Runner
from vision.backends.select import load_runner
from vision.evaluation.bench import interleaved_latency
from vision.evaluation.evaluate import EvalResult
from vision.evaluation.map_bootstrap import paired_map_delta
from vision.evaluation.sensitivity import sqnr_db
from vision.regions import Region, region_nodes

WriteModel = Callable[[Sequence[str], Path], Any]  # (float nodes, out path): writes one INT8 model of a layout


@dataclass(frozen=True)
class Target:
    """One runtime's INT8 layout: how a candidate is written and what runs it."""

    runtime: str  # a vision.backends.select backend: "onnxruntime" | "openvino"
    suffix: str  # the layout's file-name part: "ort" | "ov"
    write: WriteModel


@dataclass
class RegionPrice:
    region: str
    layers: int
    cost_ms: float  # median latency with the region float minus the uniform INT8 model's (same interleaved loop)
    gain_db: float  # output SQNR against FP32 with the region float minus the uniform INT8 model's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """One measured configuration: the regions kept float (none: the uniform INT8 model) and what it scored."""

    regions: list[str]
    float_nodes: list[str]  # every float node, the head included
    path: Path
    map50_95: float
    delta: float  # mAP50-95 points below FP32 (positive: worse)
    latency_ms: float = 0.0  # p50 from the caller's interleaved timing
    loss: Estimate | None = None  # ``delta`` with its paired 95 % interval (``map_loss``)

    @property
    def ci95(self) -> list[float] | None:
        return self.loss.ci_list() if self.loss is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"regions": self.regions, "float_nodes": len(self.float_nodes), "map50_95": self.map50_95,
                "delta": self.delta, "delta_map_ci95": self.ci95, "latency_ms": self.latency_ms}


@dataclass
class RegionSearch:
    """The search on one runtime, as compare.json and build.json record it."""

    runtime: str
    budget: float
    prices: list[RegionPrice]  # the regions the search may keep float, in the order it adds them
    candidates: list[Candidate]  # candidates[0]: the uniform INT8 model
    met: bool = False
    chosen: int = 0  # index into candidates, set by ``choose``
    trials: list[dict[str, Any]] = field(default_factory=list)
    left_int8: dict[str, list[str]] = field(default_factory=dict)  # regions never tried, by reason
    priced: dict[str, Any] = field(default_factory=dict)  # every region's price, the uniform and FP32 latencies
    rule: str = DEFAULT_BUDGET_RULE  # how a candidate meets the budget (quant_common.search.within_budget)

    def within(self, candidate: Candidate) -> bool:
        return within_budget(_loss(candidate), self.budget, self.rule)

    @property
    def best(self) -> Candidate:
        return self.candidates[self.chosen]

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"runtime": self.runtime, "budget": self.budget, "met": self.met, "rule": self.rule,
                "regions": best.regions, "excluded": best.float_nodes, "delta": best.delta,
                "delta_map_ci95": best.ci95, "map50_95": best.map50_95,
                "latency_ms": best.latency_ms, "prices": [p.to_dict() for p in self.prices],
                "left_int8": self.left_int8, "priced": self.priced,
                "candidates": [c.to_dict() for c in self.candidates], "chosen": self.chosen}


def _loss(candidate: Candidate) -> Estimate | float:
    return candidate.loss if candidate.loss is not None else candidate.delta


def output_sqnr(reference: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]]) -> float:
    """SQNR (dB) of a model's outputs against FP32's, averaged over output channels: a YOLOv8 ``B x (4+nc) x N``
    output mixes box coordinates in pixels with class scores in [0, 1], and a plain SQNR would see only the boxes."""
    values = []
    for name in reference[0]:
        ref = np.concatenate([r[name] for r in reference])
        out = np.concatenate([o[name] for o in outputs])
        if ref.ndim == 3:
            values += [min(sqnr_db(ref[:, c], out[:, c]), 60.0) for c in range(ref.shape[1])]
        else:
            values.append(min(sqnr_db(ref, out), 60.0))
    return float(np.mean(values))


def _run(runner: Runner, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [runner.infer(dict(feed)) for feed in feeds]


def price_regions(target: Target, regions: Sequence[Region], head: Sequence[str], base: Path, fp32: Path,
                  reference: Sequence[Mapping[str, np.ndarray]], feeds: Sequence[Mapping[str, np.ndarray]],
                  work_dir: Path, *, threads: int | None = None, rounds: int = 10, imgsz: int = 640
                  ) -> tuple[list[RegionPrice], float, float]:
    """Write the INT8 model with each region float, time all of them round-robin with ``base`` (the uniform INT8
    model) and ``fp32`` (the FP32 model, on the same runtime), and measure each one's output SQNR on ``feeds``
    against ``reference`` (FP32's outputs). Returns the prices and the uniform and FP32 latencies (ms)."""
    paths = []
    for i, region in enumerate(regions):
        path = work_dir / f"price-{target.suffix}-{i}.onnx"
        target.write([*head, *region.nodes], path)
        paths.append(path)
    runners = [load_runner(p, target.runtime, threads=threads) for p in [base, fp32, *paths]]
    try:
        latencies = interleaved_latency(runners, rounds=rounds, warmup=1, imgsz=imgsz)
        sqnrs = [output_sqnr(reference, _run(runner, feeds)) for runner in [runners[0], *runners[2:]]]
    finally:
        for runner in runners:
            runner.deactivate()
    for path in paths:
        path.unlink(missing_ok=True)
    prices = [RegionPrice(r.name, r.layers, latencies[i + 2] - latencies[0], sqnrs[i + 1] - sqnrs[0])
              for i, r in enumerate(regions)]
    return prices, latencies[0], latencies[1]


def rank_regions(prices: Sequence[RegionPrice], base_ms: float, fp32_ms: float | None
                 ) -> tuple[list[RegionPrice], dict[str, list[str]]]:
    """The regions worth trying, most gain per unit of cost first, and why the others are left INT8.

    Costs below 1 % of the INT8 latency are timing noise and count as that 1 %. A region that gains nothing is never
    kept float; nor is one that would bring the prefix's estimated latency (the uniform model's plus the positive
    costs before it) to FP32's on the same runtime (``fp32_ms``; None: no such limit): FP32 would then be as fast and
    more accurate."""
    floor = max(0.01 * base_ms, 1e-3)
    useful = sorted((p for p in prices if p.gain_db > 0), key=lambda p: -p.gain_db / max(p.cost_ms, floor))
    ranked, estimate = [], base_ms
    for price in useful:
        estimate += max(price.cost_ms, 0.0)
        if fp32_ms is not None and estimate >= fp32_ms:
            break
        ranked.append(price)
    left = {"no_gain": [p.region for p in prices if p.gain_db <= 0],
            "as_slow_as_fp32": [p.region for p in useful[len(ranked):]]}
    return ranked, left


def map_loss(fp32: EvalResult, candidate: EvalResult, resamples: int = DEFAULT_RESAMPLES) -> Estimate:
    """mAP50-95 points ``candidate`` is below ``fp32`` (positive: worse), with the paired 95 % interval over the
    images both were evaluated on (``vision.evaluation.map_bootstrap``)."""
    if fp32.matches is None or candidate.matches is None:
        raise QuantError("an evaluation without its per-image matching cannot give an interval",
                         "evaluate with vision.evaluation.evaluate")
    return paired_map_delta(fp32.matches, candidate.matches, resamples=resamples).scaled(-1.0)


Score = float | EvalResult  # an accuracy probe's answer: an evaluation (with its per-image matches) or a bare mAP


def _candidate(regions: list[str], nodes: list[str], path: Path, result: Score, fp32: Score,
               resamples: int) -> Candidate:
    """The candidate's loss with its paired interval where both are evaluations, else the bare difference."""
    if isinstance(result, EvalResult) and isinstance(fp32, EvalResult) and result.matches and fp32.matches:
        loss = map_loss(fp32, result, resamples)
        return Candidate(regions, nodes, path, result.map50_95, loss.value, loss=loss)
    score, ref = (r.map50_95 if isinstance(r, EvalResult) else float(r) for r in (result, fp32))
    return Candidate(regions, nodes, path, score, 100.0 * (ref - score))


def search_regions(target: Target, regions: Sequence[Region], head: Sequence[str], base: Path, base_eval: Score,
                   fp32: Path, fp32_eval: Score, evaluate_map: Callable[[Path], Score], budget: float,
                   work_dir: Path, reference: Sequence[Mapping[str, np.ndarray]],
                   feeds: Sequence[Mapping[str, np.ndarray]], *, threads: int | None = None, imgsz: int = 640,
                   rounds: int = 10, cap_at_fp32: bool = True, rule: str = DEFAULT_BUDGET_RULE,
                   resamples: int = DEFAULT_RESAMPLES) -> RegionSearch:
    """The region search on ``target``: ``base`` is the uniform INT8 model (``head`` float) evaluated as
    ``base_eval``, ``fp32`` the FP32 model evaluated as ``fp32_eval`` (the reference of every loss, on the same
    images); ``evaluate_map(file)`` evaluates on the labelled set, run by ``target.runtime`` (a bare mAP works too,
    without intervals). A candidate meets the budget under ``rule`` (``RegionSearch.within``). Candidates are written to ``work_dir``; call ``choose`` once
    they are timed. ``cap_at_fp32`` False: try regions however slow their prefix would make the model
    (``rank_regions``)."""
    uniform = _candidate([], list(head), base, base_eval, fp32_eval, resamples)
    search = RegionSearch(target.runtime, budget, [], [uniform], rule=rule)
    if search.within(uniform) or not regions:
        search.met = search.within(uniform)
        search.trials = [{"regions": 0, "delta": uniform.delta, "delta_map_ci95": uniform.ci95}]
        return search
    prices, base_ms, fp32_ms = price_regions(target, regions, head, base, fp32, reference, feeds, work_dir,
                                             threads=threads, rounds=rounds, imgsz=imgsz)
    search.prices, search.left_int8 = rank_regions(prices, base_ms, fp32_ms if cap_at_fp32 else None)
    search.priced = {"uniform_ms": base_ms, "fp32_ms": fp32_ms, "all": [p.to_dict() for p in prices]}
    by_name = {r.name: r for r in regions}

    def measure(names: list[str]) -> Estimate | float:
        nodes = [*head, *region_nodes(by_name[n] for n in names)]
        path = work_dir / f"candidate-{target.suffix}-{len(search.candidates)}.onnx"
        target.write(nodes, path)
        search.candidates.append(_candidate(list(names), nodes, path, evaluate_map(path), fp32_eval, resamples))
        return _loss(search.candidates[-1])

    found = search_ranked_prefix([p.region for p in search.prices], measure, budget, _loss(uniform), rule=rule)
    search.met = found.met
    search.trials = [{"regions": t["excluded"], "delta": t["loss"], "delta_map_ci95": t.get("loss_ci95")}
                     for t in found.trials]
    return search


def choose(search: RegionSearch) -> Candidate:
    """The fastest timed candidate within the budget under the search's rule (more accurate on a tie); the most
    accurate one where none is. Sets ``search.chosen``."""
    within = [i for i, c in enumerate(search.candidates) if search.within(c)]
    if within:
        search.chosen = min(within, key=lambda i: (search.candidates[i].latency_ms, search.candidates[i].delta))
    else:
        search.chosen = min(range(len(search.candidates)), key=lambda i: search.candidates[i].delta)
    return search.best


@dataclass(frozen=True)
class Measured:
    """One point of the run: a table row or a searched candidate."""

    name: str
    delta: float  # mAP50-95 points relative to FP32 (negative: worse), as the table prints it
    latency_ms: float
    row: bool = True  # a table row (False: a candidate the search measured)
    loss_upper: float | None = None  # upper end of the loss's (-delta's) 95 % interval, where measured


def recommend(points: Sequence[Measured], budget: float, mixed: Mapping[str, Sequence[str]],
              rule: str = DEFAULT_BUDGET_RULE) -> dict[str, Any]:
    """Which row to use: the fastest row within ``budget`` points of FP32 under ``rule`` (``"ci"``: the upper end
    of its loss's interval; the more accurate on a tie), on the Pareto front of ``points`` by construction.
    ``mixed`` maps each mixed row to its float regions; for each, say whether it is on that front and, if not,
    which row dominates it (as accurate or more, as fast or faster)."""
    front = {points[i].name for i in pareto_front([(-p.delta, p.latency_ms) for p in points])}
    rows = [p for p in points if p.row]
    within = [p for p in rows if (p.loss_upper if rule == "ci" and p.loss_upper is not None else -p.delta) <= budget]
    pick = min(within, key=lambda p: (p.latency_ms, -p.delta)) if within else max(rows, key=lambda p: p.delta)
    verdicts = {}
    for name, regions in mixed.items():
        me = next(p for p in rows if p.name == name)
        better = [p for p in rows if p.name != name and p.delta >= me.delta and p.latency_ms <= me.latency_ms
                  and (p.delta > me.delta or p.latency_ms < me.latency_ms)]
        verdicts[name] = {"on_front": name in front, "regions": len(regions), "latency_ms": me.latency_ms,
                          "delta": me.delta,
                          "dominated_by": min(better, key=lambda p: p.latency_ms).name if better else None}
    return {"variant": pick.name, "within_budget": bool(within), "rule": rule, "latency_ms": pick.latency_ms,
            "delta": pick.delta,
            "front": sorted(front), "mixed": verdicts, "reason": _reason(pick, bool(within), budget, verdicts)}


def _reason(pick: Measured, within: bool, budget: float, verdicts: Mapping[str, Mapping[str, Any]]) -> str:
    if not within:
        return (f"no variant is within {budget:g} points of FP32; {pick.name} is the most accurate "
                f"({pick.delta:+.2f} points)")
    parts = [f"the fastest variant within {budget:g} mAP50-95 points of FP32 ({pick.latency_ms:.1f} ms, "
             f"{pick.delta:+.2f} points)"]
    for name, v in verdicts.items():
        if name == pick.name:
            continue
        if not v["regions"]:
            parts.append(f"{name} keeps no region float (its uniform INT8 model meets the budget)")
        elif v["dominated_by"]:
            parts.append(f"{name} ({v['latency_ms']:.1f} ms, {v['delta']:+.2f}) is dominated by {v['dominated_by']}")
        else:
            parts.append(f"{name} is more accurate ({v['delta']:+.2f}) but slower ({v['latency_ms']:.1f} ms)")
    beaten = [name for name, v in verdicts.items() if v["regions"] and v["dominated_by"]]
    if pick.name not in verdicts and beaten:
        parts.append(f"no mixed configuration beats {pick.name} on both axes: use {pick.name}")
    return "; ".join(parts)
