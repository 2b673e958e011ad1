"""The accuracy-budget search shared by vision and llm_quant: keep the fewest top-ranked items (layers, linears)
in higher precision so that the measured loss is within a budget.

Items are plain names ranked most-damaging first by the caller; ``measure(excluded) -> loss`` is the caller's
accuracy probe (mAP points below FP32, perplexity increase in %, ...). Probes are expensive and noisy, so the
search grows a prefix geometrically (1, 2, 4, ..., all) until one meets the budget, then bisects between the last
failing and the first passing prefix: O(log n) probes, and small exclusion sets are tried first.

Whether a probe meets the budget is a rule of its own (``BUDGET_RULES``). A probe may return a plain loss or an
``Estimate`` (``quant_common.uncertainty``: the loss with its 95 % interval); ``"ci"`` accepts a prefix only when the
interval's upper end is within the budget -- the loss could be that large on the search split itself -- and
``"point"`` when the measured value is.
``pareto_front`` then says which measured configurations are worth choosing when each also has a cost (latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quant_common.errors import QuantError
from quant_common.uncertainty import Estimate

Loss = float | Estimate  # what a probe measured: a loss, or a loss with its 95 % interval
BUDGET_RULES = ("ci", "point")  # accept on the interval's upper end, or on the measured value
DEFAULT_BUDGET_RULE = "ci"


@dataclass
class PrefixSearch:
    """What the search found: ``excluded`` is a prefix of the ranking (empty when the baseline already meets it)."""

    budget: float
    excluded: list[str]
    loss: float  # measured with ``excluded`` kept in higher precision
    met: bool
    # {"excluded": k, "loss": value, "loss_ci95": [lo, hi] where the probe measured one} per probe
    trials: list[dict[str, Any]] = field(default_factory=list)
    rule: str = "point"  # the acceptance rule (BUDGET_RULES)
    loss_ci95: list[float] | None = None  # the chosen prefix's interval, where measured

    @property
    def probes(self) -> int:
        return len(self.trials)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prefix_sizes(n: int) -> list[int]:
    """1, 2, 4, ... below ``n``, then ``n`` itself (all ranked items): the prefixes the search tries first."""
    sizes, k = [], 1
    while k < n:
        sizes.append(k)
        k *= 2
    return [*sizes, n] if n else []


def within_budget(loss: Loss, budget: float, rule: str = DEFAULT_BUDGET_RULE) -> bool:
    """Whether a probe's loss meets ``budget`` under ``rule``: ``"ci"`` compares the upper end of its 95 %
    interval (the measured value where the probe has none), ``"point"`` the measured value."""
    if rule not in BUDGET_RULES:
        raise QuantError(f"unknown budget rule {rule!r}", f"choose one of {', '.join(BUDGET_RULES)}")
    if isinstance(loss, Estimate):
        return (loss.ci95[1] if rule == "ci" else loss.value) <= budget
    return loss <= budget


def _value(loss: Loss) -> float:
    return loss.value if isinstance(loss, Estimate) else float(loss)


def search_ranked_prefix(ranked: Sequence[str], measure: Callable[[list[str]], Loss], budget: float,
                         baseline: Loss | None = None, steps: Sequence[int] | None = None,
                         rule: str = DEFAULT_BUDGET_RULE) -> PrefixSearch:
    """The shortest prefix of ``ranked`` whose ``measure`` meets the budget under ``rule`` (``within_budget``).

    ``baseline`` is the loss with nothing excluded (measured here when not given). Unmet even with every ranked
    item excluded: the best prefix tried (lowest measured value), ``met`` False. Measured losses are noisy, not
    monotone, so the bisection finds *a* smallest passing prefix between its bounds, not a proven minimum.
    """
    if budget < 0:
        raise QuantError(f"accuracy budget {budget} is negative", "pass a budget >= 0")
    within_budget(0.0, budget, rule)  # an unknown rule fails before the first probe
    trials: list[dict[str, Any]] = []
    losses: dict[int, Loss] = {}
    best: tuple[float, int] = (float("inf"), 0)

    def trial(k: int, value: Loss | None = None) -> bool:
        nonlocal best
        loss = measure(list(ranked[:k])) if value is None else value
        losses[k] = loss
        trials.append({"excluded": k, "loss": _value(loss),
                       **({"loss_ci95": loss.ci_list()} if isinstance(loss, Estimate) else {})})
        if _value(loss) < best[0]:
            best = (_value(loss), k)
        return within_budget(loss, budget, rule)

    def result(k: int, met: bool) -> PrefixSearch:
        loss = losses[k]
        return PrefixSearch(budget, list(ranked[:k]), _value(loss), met, trials, rule,
                            loss.ci_list() if isinstance(loss, Estimate) else None)

    if trial(0, baseline):
        return result(0, True)
    failing = 0
    for k in steps if steps is not None else prefix_sizes(len(ranked)):
        if k > len(ranked):
            break
        if trial(k):
            passing = k
            while passing - failing > 1:
                mid = (failing + passing) // 2
                if trial(mid):
                    passing = mid
                else:
                    failing = mid
            return result(passing, True)
        failing = k
    return result(best[1], False)


# -- comparing measured configurations ------------------------------------------------------------------------------
# Kept apart from the budget search above: the search decides which candidates to measure, this says which of the
# measured ones (from any source: uniform formats, runtimes, searched candidates) are worth choosing at all.

def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, each point ``(loss, cost)`` with both to be minimised (e.g.
    accuracy points below the reference and latency). A point is dominated by one that is no worse on both axes and
    better on one; equal points are all kept. Indices are returned in input order."""
    return [i for i, (loss, cost) in enumerate(points)
            if not any((other_loss <= loss and other_cost <= cost) and (other_loss < loss or other_cost < cost)
                       for other_loss, other_cost in points)]
