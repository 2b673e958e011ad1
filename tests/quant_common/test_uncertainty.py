"""The seeded paired bootstrap: the interval brackets the estimate, shrinks with more units, is reproducible and
is paired (narrower than the models' separate spread)."""

from __future__ import annotations

import numpy as np
import pytest

from quant_common.errors import QuantError
from quant_common.uncertainty import Estimate, bootstrap, paired_ratio_delta_pct, resample_counts


def windows(n: int, seed: int = 0, tokens: int = 511) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-window NLL sums of a reference and a slightly worse model: windows differ a lot in difficulty (shared by
    both models), the quantized model adds ~0.02 nats per token (~2 % perplexity) with window-to-window noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(4.0, 0.75, n)  # mean NLL per token ~3, varying between windows
    ref = difficulty * tokens
    quant = ref + tokens * (0.02 + rng.normal(0, 0.01, n))
    return ref, quant, np.full(n, tokens)


def test_counts_are_seeded_resamples_with_replacement():
    counts = resample_counts(50, 200, seed=3)
    assert counts.shape == (200, 50) and (counts.sum(axis=1) == 50).all()
    assert (counts == resample_counts(50, 200, seed=3)).all()
    assert not (counts == resample_counts(50, 200, seed=4)).all()
    assert (counts == 0).any() and (counts > 1).any()  # with replacement


@pytest.mark.parametrize("seed", range(5))
def test_interval_brackets_the_estimate_and_shrinks_with_more_data(seed):
    small = paired_ratio_delta_pct(*windows(16, seed), seed=seed)
    large = paired_ratio_delta_pct(*windows(256, seed), seed=seed)
    for est in (small, large):
        assert est.ci95[0] < est.value < est.ci95[1]
        assert 0.5 < est.value < 4.0  # the simulated ~2 % change
    assert large.width < 0.6 * small.width  # ~1/sqrt(16) in theory: 0.25
    assert small.units == 16 and large.units == 256 and small.resamples == 1000


def test_point_estimate_is_the_perplexity_change_on_all_units():
    ref, quant, tokens = windows(40)
    est = paired_ratio_delta_pct(ref, quant, tokens)
    ppl_ref, ppl_quant = np.exp(ref.sum() / tokens.sum()), np.exp(quant.sum() / tokens.sum())
    assert est.value == pytest.approx(100 * (ppl_quant - ppl_ref) / ppl_ref, rel=1e-9)


def test_the_bootstrap_is_paired():
    """The same resample for both models: the interval of the difference is much narrower than the spread of the
    models' own perplexities, which share each window's difficulty."""
    ref, quant, tokens = windows(64)
    est = paired_ratio_delta_pct(ref, quant, tokens)
    own = bootstrap(lambda w: np.exp((w @ ref) / (w @ tokens)), 64)
    assert est.width < 0.2 * 100 * own.width / own.value


def test_reruns_give_the_same_interval_and_seeds_differ():
    data = windows(30)
    assert paired_ratio_delta_pct(*data, seed=1) == paired_ratio_delta_pct(*data, seed=1)
    assert paired_ratio_delta_pct(*data, seed=1).ci95 != paired_ratio_delta_pct(*data, seed=2).ci95


def test_estimate_scaling_keeps_lo_below_hi():
    est = Estimate(0.5, (0.2, 0.9), 10, 100, 0)
    flipped = est.scaled(-100)
    assert flipped.value == -50 and flipped.ci95 == (-90.0, -20.0)
    assert est.excludes_zero() and not Estimate(0.1, (-0.2, 0.3), 10, 100, 0).excludes_zero()
    assert est.text() == "+0.50 [+0.20, +0.90]"


def test_nothing_to_resample_is_one_clear_error():
    with pytest.raises(QuantError, match="no units"):
        resample_counts(0)
    with pytest.raises(QuantError, match="differ"):
        paired_ratio_delta_pct(np.ones(3), np.ones(4), np.ones(3))
