"""The accuracy-budget search shared by vision and llm_quant: keep the fewest top-ranked items (layers, linears)
in higher precision so that the measured loss is within a budget.

Items are plain names ranked most-damaging first by the caller; ``measure(excluded) -> loss`` is the caller's
accuracy probe (mAP points below FP32, perplexity increase in %, ...). Probes are expensive and noisy, so the
search grows a prefix geometrically (1, 2, 4, ..., all) until one meets the budget, then bisects between the last
failing and the first passing prefix: O(log n) probes, and small exclusion sets are tried first.
``pareto_front`` then says which measured configurations are worth choosing when each also has a cost (latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quant_common.errors import QuantError


@dataclass
class PrefixSearch:
    """What the search found: ``excluded`` is a prefix of the ranking (empty when the baseline already meets it)."""

    budget: float
    excluded: list[str]
    loss: float  # measured with ``excluded`` kept in higher precision
    met: bool
    trials: list[dict[str, Any]] = field(default_factory=list)  # {"excluded": k, "loss": value} per probe

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


def search_ranked_prefix(ranked: Sequence[str], measure: Callable[[list[str]], float], budget: float,
                         baseline: float | None = None, steps: Sequence[int] | None = None) -> PrefixSearch:
    """The shortest prefix of ``ranked`` whose ``measure`` is ``<= budget``.

    ``baseline`` is the loss with nothing excluded (measured here when not given). Unmet even with every ranked
    item excluded: the best prefix tried, ``met`` False. Measured losses are noisy, not monotone, so the bisection
    finds *a* smallest passing prefix between its bounds, not a proven minimum.
    """
    if budget < 0:
        raise QuantError(f"accuracy budget {budget} is negative", "pass a budget >= 0")
    trials: list[dict[str, Any]] = []
    best: tuple[float, list[str]] = (float("inf"), [])

    def trial(k: int, value: float | None = None) -> float:
        nonlocal best
        excluded = list(ranked[:k])
        loss = measure(excluded) if value is None else value
        trials.append({"excluded": k, "loss": loss})
        if loss < best[0]:
            best = (loss, excluded)
        return loss

    if trial(0, baseline) <= budget:
        return PrefixSearch(budget, [], trials[0]["loss"], True, trials)
    failing = 0
    for k in steps if steps is not None else prefix_sizes(len(ranked)):
        if k > len(ranked):
            break
        loss = trial(k)
        if loss <= budget:
            passing = (k, loss)
            while passing[0] - failing > 1:
                mid = (failing + passing[0]) // 2
                mid_loss = trial(mid)
                if mid_loss <= budget:
                    passing = (mid, mid_loss)
                else:
                    failing = mid
            return PrefixSearch(budget, list(ranked[:passing[0]]), passing[1], True, trials)
        failing = k
    return PrefixSearch(budget, best[1], best[0], False, trials)


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
