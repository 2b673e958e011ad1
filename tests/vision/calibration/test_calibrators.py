"""Calibrators: Entropy2 picks modelopt's bin (and an independent slow reference's) on many distributions;
MinMax is exact; percentile and MSE behave."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from quant_common.errors import QuantError
from tests.vision.conftest import modelopt_function
from vision.calibration.calibrators import (
    CALIBRATOR_NAMES,
    CALIBRATORS,
    COMPARED,
    compute_all,
    compute_amax,
    entropy2_amax,
    entropy2_bin,
    entropy2_divergences,
    minmax_amax,
    mse_amax,
    percentile_amax,
)
from vision.calibration.stats import TensorStats
from vision.config import VisionConfig
from vision.pipeline.compare import CompareOptions


def _hist(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    magnitude = np.abs(np.asarray(values, dtype=np.float64))
    top = magnitude.max() if magnitude.size and magnitude.max() > 0 else 1.0
    hist, edges = np.histogram(magnitude, bins=bins, range=(0.0, top))
    return hist.astype(np.int64), edges


def _distributions(bins: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(2024)
    values = {
        "normal": rng.standard_normal(50_000),
        "laplace": rng.laplace(size=50_000),
        "cauchy": rng.standard_cauchy(20_000),
        "student_t2": rng.standard_t(2, 30_000),
        "lognormal": rng.lognormal(0.0, 1.5, 30_000),
        "exponential": rng.exponential(size=30_000),
        "uniform": rng.uniform(-1, 1, 30_000),
        "bimodal_far": np.r_[rng.normal(0, 1, 40_000), rng.normal(25, 1, 800)],
        "relu": np.maximum(rng.standard_normal(40_000), 0),
        "sparse_values": rng.choice([0.0, 1.0, 2.5, 40.0], size=5_000, p=[0.5, 0.3, 0.19, 0.01]),
        "single_value": np.full(1_000, 3.25),
        "negative_only": -np.abs(rng.standard_normal(20_000)) * 4,
        "tiny_counts": rng.standard_normal(25),
        "three_samples": np.array([0.1, 0.5, 2.0]),
        "sigmoid_like": rng.uniform(0.3, 1.0, 20_000),
        "zero_spike_tail": np.r_[np.zeros(30_000), rng.exponential(3.0, 3_000)],
        "pareto": rng.pareto(1.5, 20_000),
        "three_gaussians": np.r_[rng.normal(0, 0.2, 10_000), rng.normal(3, 0.5, 5_000), rng.normal(8, 1, 500)],
        "one_outlier": np.r_[rng.standard_normal(50_000), [500.0]],
        "beta_u_shape": rng.beta(0.5, 0.5, 20_000),
        "silu_like": (lambda x: x / (1 + np.exp(-x)))(rng.normal(0, 3, 40_000)),
    }
    cases = {name: _hist(v, bins) for name, v in values.items()}
    gaps = rng.poisson(200, bins).astype(np.int64)
    gaps[1::2] = 0
    cases["alternate_empty_bins"] = (gaps, np.linspace(0, 7.0, bins + 1))
    cases["random_counts"] = (rng.integers(0, 1_000, bins), np.linspace(0, 1.0, bins + 1))
    cases["huge_counts"] = (cases["laplace"][0] * 1_000_003, cases["laplace"][1])
    cases["last_bin_only"] = (np.r_[np.zeros(bins - 1, np.int64), [77]], np.linspace(0, 2.0, bins + 1))
    cases["all_zero"] = (np.zeros(bins, np.int64), np.linspace(0, 1.0, bins + 1))
    return cases


def _reference_entropy_bin(hist: np.ndarray, start_bin: int = 128, nq: int = 128) -> int:
    """Straight per-cut loop written from the GTC 2017 description (P with folded tail, Q merged into nq groups and
    spread over non-empty bins, KL of the normalised pair; empty-Q cuts are NaN and win, last minimum wins)."""
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    values = []
    for i in range(start_bin, bins.size + 1):
        p = bins[:i].copy()
        p[i - 1] += bins[i:].sum()
        q = np.zeros(i)
        for g in range(nq):
            lo, hi = int(np.ceil(g * i / nq)), int(np.ceil((g + 1) * i / nq))
            chunk = bins[lo:hi]
            filled = chunk > 0
            if filled.any():
                q[lo:hi][filled] = chunk.sum() / filled.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            pn, qn = p / p.sum(), q / q.sum()
            terms = np.where(pn > 0, pn * np.log(pn / qn), 0.0)
        values.append(terms.sum())
    array = np.array(values)
    if np.isnan(array).any():
        return start_bin + int(np.flatnonzero(np.isnan(array))[-1])
    return start_bin + int(array.size - 1 - np.argmin(array[::-1]))


def modelopt_compute_amax_entropy() -> Callable[..., Any]:
    """modelopt's own ``_compute_amax_entropy`` (torch is only used for its return value)."""
    from scipy.stats import entropy

    return modelopt_function("torch/quantization/calib/histogram.py", "_compute_amax_entropy",
                             {"np": np, "Counter": Counter, "entropy": entropy,
                              "torch": SimpleNamespace(tensor=np.float32)})


def _modelopt_bin(hist: np.ndarray, edges: np.ndarray) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        amax = float(modelopt_compute_amax_entropy()(hist.copy(), edges, 8, False))
    matches = np.flatnonzero(edges.astype(np.float32) == np.float32(amax))
    assert matches.size >= 1, f"modelopt amax {amax} is not an edge"
    return int(matches[-1])


SMALL = _distributions(256)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_entropy2_picks_the_bin_of_modelopt_and_of_a_reference_loop(name: str) -> None:
    hist, edges = SMALL[name]
    ours = entropy2_bin(hist, edges)
    assert ours == _reference_entropy_bin(hist)
    assert ours == _modelopt_bin(hist, edges)
    assert entropy2_amax(hist, edges) == edges[ours]


@pytest.mark.parametrize("name", ["bimodal_far"])
def test_entropy2_matches_modelopt_on_full_2048_bin_histograms(name: str) -> None:
    hist, edges = _distributions(2048)[name]
    assert entropy2_bin(hist, edges) == _modelopt_bin(hist, edges)


def test_compiled_and_numpy_engines_agree() -> None:
    rng = np.random.default_rng(7)
    for _ in range(10):
        scale = rng.uniform(0.5, 3.0)
        values = np.r_[rng.laplace(0, scale, rng.integers(1_000, 200_000)), rng.normal(20, 2, rng.integers(0, 500))]
        hist, edges = _hist(values, 2048)
        compiled = entropy2_divergences(hist, edges)
        vectorised = entropy2_divergences(hist, edges, engine="numpy")
        np.testing.assert_array_equal(np.isfinite(compiled), np.isfinite(vectorised))
        finite = np.isfinite(compiled)
        np.testing.assert_allclose(compiled[finite], vectorised[finite], rtol=1e-9, atol=1e-12)


def test_entropy2_other_group_counts_and_few_bins() -> None:
    hist, edges = SMALL["lognormal"]
    assert entropy2_bin(hist, edges, num_quant_bins=64, start_bin=64) == _reference_entropy_bin(hist, 64, 64)
    assert entropy2_amax(hist[:100], edges[:101]) == edges[100]  # fewer bins than start_bin: no clipping
    with pytest.raises(QuantError, match="start_bin"):
        entropy2_amax(hist, edges, start_bin=64)
    with pytest.raises(QuantError, match="edges"):
        entropy2_amax(hist, edges[:-1])


def _stats(values: np.ndarray, bins: int = 2048) -> TensorStats:
    hist, edges = _hist(values, bins)
    return TensorStats("t", float(values.min()), float(values.max()), hist, edges)


def test_minmax_is_exact_absmax() -> None:
    values = np.array([-7.25, 0.0, 3.5], dtype=np.float32)
    assert minmax_amax(_stats(values)) == 7.25
    assert compute_amax(_stats(-values), "minmax") == 7.25


def test_percentile_is_monotonic_and_sane() -> None:
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, 200_000)
    hist, edges = _hist(values, 2048)
    levels = [50, 90, 99, 99.9, 99.99, 100]
    amaxes = [percentile_amax(hist, edges, p) for p in levels]
    assert all(a <= b for a, b in zip(amaxes, amaxes[1:], strict=False))
    assert abs(amaxes[0] - 0.5) < 0.01 and abs(amaxes[2] - 0.99) < 0.01
    assert amaxes[-1] == pytest.approx(values.max())
    heavy, heavy_edges = _hist(np.r_[rng.standard_normal(100_000), [1e3]], 2048)
    assert percentile_amax(heavy, heavy_edges, 99.99) < 10
    with pytest.raises(QuantError, match="percentile"):
        percentile_amax(hist, edges, 101)
    assert percentile_amax(np.zeros(2048, np.int64), edges) == 0.0


def _quantization_mse(values: np.ndarray, amax: float) -> float:
    step = amax / 127
    return float(np.mean((np.clip(np.round(values / step), -127, 127) * step - values) ** 2))


def test_mse_stays_within_range_and_beats_minmax_on_heavy_tails() -> None:
    rng = np.random.default_rng(5)
    for values in (rng.laplace(size=100_000), rng.standard_t(2, 100_000), np.r_[rng.normal(size=100_000), [80.0]]):
        stats = _stats(values)
        amax = mse_amax(stats.hist, stats.edges)
        assert 0 < amax <= stats.absmax
        assert _quantization_mse(values, amax) < _quantization_mse(values, stats.absmax)
    uniform = _stats(rng.uniform(-1, 1, 50_000))
    assert mse_amax(uniform.hist, uniform.edges) > 0.97  # nothing to clip in a uniform distribution
    assert mse_amax(np.zeros(2048, np.int64), np.linspace(0, 1, 2049)) == 0.0


def test_registry_and_errors() -> None:
    assert CALIBRATOR_NAMES == ("minmax", "entropy2", "percentile", "mse")
    assert CALIBRATORS["minmax"].trt_algorithm == "MinMaxCalibration"
    assert CALIBRATORS["entropy2"].trt_algorithm == "EntropyCalibration2"
    # methods without a TensorRT calibrator are read back by Entropy2's (what trtexec --calib uses)
    assert {spec.trt_algorithm for spec in CALIBRATORS.values()} == {"MinMaxCalibration", "EntropyCalibration2"}
    assert COMPARED == ("minmax", "entropy2", "percentile")
    assert CALIBRATORS["percentile"].options_from(SimpleNamespace(percentile=99.9)) == {"percentile": 99.9}
    assert CALIBRATORS["entropy2"].options_from(SimpleNamespace(percentile=99.9)) == {}
    stats = {"a": _stats(np.linspace(-1, 2, 5_000)), "b": _stats(np.linspace(0, 4, 5_000))}
    result = compute_all(stats, "percentile", percentile=100.0)
    assert list(result) == ["a", "b"] and result["b"] == pytest.approx(4.0)
    many = {f"t{i}": _stats(np.random.default_rng(i).laplace(size=5_000)) for i in range(10)}
    assert compute_all(many, "entropy2", workers=3) == compute_all(many, "entropy2", workers=1)
    with pytest.raises(QuantError, match="unknown calibrator 'kl'.*entropy2, minmax, mse, percentile"):
        compute_all(stats, "kl")
    with pytest.raises(QuantError, match="unknown option"):
        compute_amax(stats["a"], "entropy2", percentile=3)


@pytest.mark.parametrize("name", CALIBRATOR_NAMES)
def test_every_table_row_runs_with_the_options_build_and_compare_pass(name: str) -> None:
    """A row's options must be fields of both configs, and its function must take them."""
    spec = CALIBRATORS[name]
    stats = {"t": _stats(np.random.default_rng(0).laplace(size=20_000))}
    for source in (VisionConfig(), CompareOptions()):
        amax = compute_all(stats, name, **spec.options_from(source))["t"]
        assert 0 < amax <= stats["t"].absmax
