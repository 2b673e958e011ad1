"""The build/compare budget search: quant_common's ranked-prefix search over layers ranked by added error, recorded
in build.json / compare.json with the points below FP32 as ``delta``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quant_common.errors import QuantError
from quant_common.search import search_ranked_prefix
from vision.evaluation.sensitivity import LayerError
from vision.pipeline.mixed_precision import BudgetSearch


def _search(ranked: list[LayerError], measure: Callable[[list[str]], float], budget: float,
            baseline_delta: float) -> BudgetSearch:
    """What budgeted_mixed_precision runs: the ranked layers' names, the given baseline, the recorded form."""
    search = search_ranked_prefix([e.node for e in ranked], measure, budget, baseline_delta)
    record = BudgetSearch.from_prefix_search(search)
    assert all(set(trial) == {"excluded", "delta"} for trial in record.trials)  # build.json's trial format
    assert record.trials[0] == {"excluded": 0, "delta": baseline_delta}
    return record


def _ranked(n: int) -> list[LayerError]:
    return [LayerError(f"layer{i}", "Conv", f"t{i}", 10.0, float(n - i)) for i in range(n)]


def test_budget_search_stops_at_the_first_prefix_that_meets_it() -> None:
    calls: list[int] = []

    def measure(excluded: list[str]) -> float:
        calls.append(len(excluded))
        return {1: 1.5, 2: 0.9, 3: 0.6, 4: 0.4, 8: 0.1}[len(excluded)]

    search = _search(_ranked(10), measure, budget=0.5, baseline_delta=2.0)
    assert search.met and search.excluded == ["layer0", "layer1", "layer2", "layer3"]
    assert search.delta == 0.4 and calls == [1, 2, 4, 3]  # 3 (between failing 2 and passing 4) fails
    assert _search(_ranked(10), measure, budget=0.5, baseline_delta=0.3).excluded == []
    unmet = _search(_ranked(3), lambda e: 1.0 + 0.1 * len(e), budget=0.5, baseline_delta=2.0)
    assert not unmet.met and unmet.excluded == ["layer0"] and unmet.delta == pytest.approx(1.1)
    with pytest.raises(QuantError, match="negative"):
        _search(_ranked(2), measure, budget=-1, baseline_delta=1.0)


def test_budget_search_goes_past_32_to_all_layers_then_bisects_to_the_fewest() -> None:
    calls: list[int] = []

    def measure(excluded: list[str]) -> float:
        calls.append(len(excluded))
        return 0.4 if len(excluded) >= 41 else 0.6  # only 41 or more float layers meet 0.5

    search = _search(_ranked(100), measure, budget=0.5, baseline_delta=2.0)
    assert calls[:8] == [1, 2, 4, 8, 16, 32, 64, 48]  # doubling past 32, then bisecting 32..64
    assert search.met and len(search.excluded) == 41 and search.delta == 0.4
    assert [t["excluded"] for t in search.trials][1:] == calls
    only_all = _search(_ranked(70), lambda e: 0.4 if len(e) == 70 else 0.9, budget=0.5, baseline_delta=2.0)
    assert only_all.met and len(only_all.excluded) == 70  # all ranked layers is the last prefix tried
