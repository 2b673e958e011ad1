"""Seeded paired bootstrap: a difference between two models measured on the same units (images, token windows),
with its 95 % confidence interval.

Both models were run on the same ``n`` units, so the units are resampled with replacement and the *same* resample
is applied to both: the interval is that of the difference, which is far narrower than the two models' own
intervals (they share the hard and the easy units). A statistic takes unit weights -- how often each unit is in
a resample -- so a resample is a vector of counts and a statistic never copies data: ``statistic(counts)`` with
``counts`` a ``[B, n]`` integer matrix returns ``B`` values (row ``i`` is one resample; all-ones is the data itself).

The interval is the percentile interval of ``resamples`` replicates (Efron & Tibshirani 1993, ch. 13); the
resamples come from ``numpy.random.default_rng(seed)``, so a rerun prints the same interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant_common.errors import QuantError

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95

Statistic = Callable[[np.ndarray], np.ndarray]  # [B, n] unit counts -> [B] values


@dataclass(frozen=True)
class Estimate:
    """A measured value (on all units) and its bootstrap interval."""

    value: float
    ci95: tuple[float, float]
    units: int  # how many units (images, token windows) were resampled
    resamples: int
    seed: int

    @property
    def width(self) -> float:
        return self.ci95[1] - self.ci95[0]

    def excludes_zero(self) -> bool:
        """The interval lies entirely on one side of 0: the difference is not noise at the 95 % level."""
        return self.ci95[0] > 0 or self.ci95[1] < 0

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in other units (e.g. x100 for points, -1 for "loss" instead of "change")."""
        lo, hi = sorted((self.ci95[0] * factor, self.ci95[1] * factor))
        return Estimate(self.value * factor, (lo, hi), self.units, self.resamples, self.seed)

    def ci_list(self, digits: int = 4) -> list[float]:
        """``[lo, hi]`` rounded, as build.json and ``--json`` write it."""
        return [round(self.ci95[0], digits), round(self.ci95[1], digits)]

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        return {"value": round(self.value, digits), "ci95": self.ci_list(digits), "units": self.units,
                "resamples": self.resamples, "seed": self.seed}

    def text(self, digits: int = 2, sign: bool = True) -> str:
        """``+1.23 [+0.40, +2.05]`` for summaries and tables."""
        fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"{fmt.format(self.value)} [{fmt.format(self.ci95[0])}, {fmt.format(self.ci95[1])}]"


def resample_counts(units: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[resamples, units]`` counts: row ``i`` says how often each unit is drawn in resample ``i`` (rows sum to
    ``units``). Seeded; the same ``(units, resamples, seed)`` always gives the same matrix."""
    if units < 1:
        raise QuantError("nothing to bootstrap: no units were measured", "evaluate on at least one image / window")
    if resamples < 1:
        raise QuantError(f"bootstrap resamples must be at least 1, got {resamples}", "pass a positive number")
    rng = np.random.default_rng(seed)
    return rng.multinomial(units, np.full(units, 1.0 / units), size=resamples)


def bootstrap(statistic: Statistic, units: int, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
              chunk: int = 256) -> Estimate:
    """``statistic`` on all units with its 95 % percentile interval over ``resamples`` seeded resamples.

    ``statistic`` is paired when it computes a difference of two models from the same counts (see the module
    docstring). Resamples are evaluated ``chunk`` rows at a time to bound memory.
    """
    counts = resample_counts(units, resamples, seed)
    value = float(np.asarray(statistic(np.ones((1, units), dtype=np.int64)))[0])
    replicates = np.concatenate([np.asarray(statistic(counts[i:i + chunk]), dtype=np.float64)
                                 for i in range(0, resamples, chunk)])
    return from_replicates(value, replicates, units, seed)


def from_replicates(value: float, replicates: np.ndarray, units: int, seed: int = DEFAULT_SEED) -> Estimate:
    """The estimate of ``value`` whose interval is the 95 % percentile interval of bootstrap ``replicates`` (for
    callers that compute replicates themselves, e.g. to share one model's replicates among several differences)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        raise QuantError("every bootstrap resample gave an undefined value", "evaluate on more images / text")
    alpha = (1.0 - LEVEL) / 2
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return Estimate(float(value), (float(lo), float(hi)), units, len(replicates), seed)


def paired_ratio_delta_pct(ref_nll: np.ndarray, quant_nll: np.ndarray, tokens: np.ndarray, *,
                           resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate:
    """Perplexity change in % (quantized vs reference) with its paired interval, from per-unit NLL sums.

    ``ref_nll[i]``/``quant_nll[i]``: summed negative log-likelihood of unit ``i`` (a token window) under each
    model, ``tokens[i]`` its predicted tokens. Perplexity is ``exp(sum nll / sum tokens)``, so the change is
    ``exp((sum quant - sum ref) / sum tokens) - 1`` over the units of a resample.
    """
    ref, quant, count = (np.asarray(a, dtype=np.float64) for a in (ref_nll, quant_nll, tokens))
    if not ref.shape == quant.shape == count.shape or ref.ndim != 1:
        raise QuantError(f"per-unit NLL shapes differ: {ref.shape}, {quant.shape}, {count.shape}",
                         "score both models on the same token windows")
    diff = quant - ref

    def statistic(weights: np.ndarray) -> np.ndarray:
        return 100.0 * np.expm1((weights @ diff) / (weights @ count))

    return bootstrap(statistic, len(ref), resamples=resamples, seed=seed)
