"""The ranked-prefix budget search: fewest top-ranked items whose measured loss meets the budget."""

from __future__ import annotations

import pytest

from quant_common.errors import QuantError
from quant_common.search import pareto_front, prefix_sizes, search_ranked_prefix, within_budget
from quant_common.uncertainty import Estimate

NAMES = [f"layer{i}" for i in range(20)]


def loss_falling_with(count_needed: int):
    calls: list[int] = []

    def measure(excluded: list[str]) -> float:
        calls.append(len(excluded))
        return 0.0 if len(excluded) >= count_needed else 1.0

    return measure, calls


def test_prefix_sizes_double_then_all():
    assert prefix_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert prefix_sizes(1) == [1]
    assert prefix_sizes(0) == []


@pytest.mark.parametrize("needed", [1, 3, 5, 9, 17, 20])
def test_finds_the_smallest_passing_prefix(needed):
    measure, calls = loss_falling_with(needed)
    result = search_ranked_prefix(NAMES, measure, budget=0.5, baseline=1.0)
    assert result.met
    assert result.excluded == NAMES[:needed]
    assert result.loss == 0.0
    assert result.probes == len(calls) + 1  # the given baseline counts as the first trial
    assert len(calls) <= 2 * 5 + 1  # geometric growth then bisection: O(log n) probes


def test_baseline_within_budget_measures_nothing_else():
    measure, calls = loss_falling_with(3)
    result = search_ranked_prefix(NAMES, measure, budget=2.0, baseline=1.0)
    assert result.met and result.excluded == [] and calls == []


def test_baseline_is_measured_when_not_given():
    measure, calls = loss_falling_with(0)
    result = search_ranked_prefix(NAMES, measure, budget=0.5)
    assert result.met and result.excluded == [] and calls == [0]


def test_unmet_budget_returns_best_prefix_tried():
    losses = {0: 5.0, 1: 4.0, 2: 3.0, 4: 2.5, 8: 2.0, 16: 2.2, 20: 2.1}
    result = search_ranked_prefix(NAMES, lambda ex: losses[len(ex)], budget=1.0)
    assert not result.met
    assert result.excluded == NAMES[:8] and result.loss == 2.0


def test_negative_budget_is_refused():
    with pytest.raises(QuantError, match="negative"):
        search_ranked_prefix(NAMES, lambda ex: 0.0, budget=-1)


def interval_falling_with(k_point: int, k_upper: int):
    """Losses with intervals: the measured value is within a budget of 1.0 from ``k_point`` items excluded, the
    interval's upper end only from ``k_upper``."""

    def measure(excluded: list[str]) -> Estimate:
        k = len(excluded)
        value = 0.5 if k >= k_point else 2.0
        upper = 0.9 if k >= k_upper else 1.6
        return Estimate(value, (value - 0.4, max(upper, value + 0.1)), 100, 200, 0)

    return measure


def test_ci_rule_accepts_only_when_the_upper_end_is_within_budget():
    measure = interval_falling_with(3, 9)
    point = search_ranked_prefix(NAMES, measure, budget=1.0, rule="point")
    ci = search_ranked_prefix(NAMES, measure, budget=1.0, rule="ci")
    assert point.excluded == NAMES[:3] and point.rule == "point"
    assert ci.excluded == NAMES[:9] and ci.rule == "ci" and ci.met
    assert ci.loss == 0.5 and ci.loss_ci95 == [0.1, 0.9]
    assert all("loss_ci95" in t for t in ci.trials)
    assert within_budget(Estimate(0.5, (0.1, 1.2), 10, 10, 0), 1.0, "point")
    assert not within_budget(Estimate(0.5, (0.1, 1.2), 10, 10, 0), 1.0, "ci")
    assert within_budget(0.8, 1.0, "ci")  # a probe without an interval: its value


def test_ci_rule_never_met_returns_the_best_value_tried():
    measure = interval_falling_with(1, 10_000)
    found = search_ranked_prefix(NAMES, measure, budget=1.0, rule="ci")
    assert not found.met and found.loss == 0.5 and found.excluded == NAMES[:1]


def test_unknown_rule_is_refused_before_any_probe():
    measure, calls = loss_falling_with(3)
    with pytest.raises(QuantError, match="budget rule"):
        search_ranked_prefix(NAMES, measure, budget=1.0, rule="mean")
    assert calls == []


def test_pareto_front_keeps_only_undominated_points():
    # (loss, cost): the second is dominated by the first (worse loss, same cost), the fourth by the third
    points = [(0.2, 10.0), (0.5, 10.0), (0.0, 30.0), (0.1, 31.0), (0.9, 5.0), (0.9, 5.0)]
    assert pareto_front(points) == [0, 2, 4, 5]  # equal points are both kept
    assert pareto_front([]) == [] and pareto_front([(1.0, 1.0)]) == [0]
