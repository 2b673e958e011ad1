"""Calibrators: pure ``|x| histogram → amax`` functions (MinMax, Entropy2, percentile, MSE) and the table of them.

Every function takes a histogram of ``|x|`` (``hist[k]`` counts values in ``[edges[k], edges[k+1])``, ``edges[0] == 0``)
and returns the clipping threshold ``amax``; the INT8 scale is ``amax / 127``. No I/O, no state: the statistics
module decides how histograms are made, this module only searches them.

``CALIBRATORS`` is the one list of methods: each row names the method, its function, the algorithm word its
TensorRT calibration cache carries and the build options it takes. The config's choices, the CLI help, the cache
header, ``vision-quant compare``'s default set and the report colours all derive from it, so a new method is one
function plus one row.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from quant_common.errors import QuantError
from vision.calibration.histkernels import entropy_q_terms
from vision.calibration.stats import TensorStats

_TINY = 1e-300  # log(max(G, tiny)) * G is 0 for an empty group without a branch


def minmax_amax(stats: TensorStats) -> float:
    """TensorRT's MinMax calibrator: the largest magnitude seen, exactly."""
    return float(stats.absmax)


def _as_hist(hist: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts = np.asarray(hist, dtype=np.float64).ravel()
    bounds = np.asarray(edges, dtype=np.float64).ravel()
    if bounds.size != counts.size + 1 or counts.size == 0:
        raise QuantError(f"histogram has {counts.size} bins but {bounds.size} edges (need bins + 1)",
                         "pass the edges returned with the histogram")
    return counts, bounds


@functools.lru_cache(maxsize=8)
def _cut_boundaries(n_bins: int, start_bin: int, num_quant_bins: int) -> np.ndarray:
    """``[cut, group]`` first source bin of each of the ``num_quant_bins`` groups, for every cut ``i``.

    Bin ``j < i`` belongs to group ``g`` when ``space[g] <= j < space[g+1]`` with ``space = linspace(0, i, nq+1)``
    (what ``np.digitize`` does in modelopt's loop), so group ``g`` starts at ``ceil(space[g])``. ``space`` is built
    with linspace's own arithmetic (``g * (i / nq)``, last point exactly ``i``) so the groups match bit for bit.
    Memoised: every histogram of one size shares it (read-only).
    """
    cuts = np.arange(start_bin, n_bins + 1, dtype=np.float64)
    space = np.arange(num_quant_bins + 1, dtype=np.float64)[None, :] * (cuts / num_quant_bins)[:, None]
    space[:, -1] = cuts
    bounds = np.ceil(space).astype(np.intp)
    bounds.setflags(write=False)
    return bounds


def _last_argmin(values: np.ndarray) -> int:
    """Index of the last minimum, treating NaN as smallest — what ``np.argmin`` on the reversed array does in modelopt."""
    nan = np.isnan(values)
    if nan.any():
        return int(np.flatnonzero(nan)[-1])
    return int(values.size - 1 - np.argmin(values[::-1]))


def _q_log_terms(csum: np.ndarray, nonzero: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy version of ``histkernels.entropy_q_terms`` (the reference it is tested against): per cut,
    ``sum_j b_j log Q_j`` over the first ``i`` bins and ``Q`` of the last group (which holds bin i-1). Q spreads
    each group's mass ``G`` evenly over its ``N`` non-empty bins, so the sum is ``sum_g G_g log(G_g / N_g)``."""
    mass_at = csum.take(bounds)
    nonzero_at = nonzero.take(bounds)
    group_mass = mass_at[:, 1:] - mass_at[:, :-1]
    level = group_mass / np.maximum(nonzero_at[:, 1:] - nonzero_at[:, :-1], 1)
    return np.einsum("ij,ij->i", group_mass, np.log(np.maximum(level, _TINY))), level[:, -1]


def entropy2_divergences(hist: np.ndarray, edges: np.ndarray, *, num_quant_bins: int = 128,
                         start_bin: int = 128, engine: Literal["numba", "numpy"] = "numba") -> np.ndarray:
    """KL(P || Q) for every cut ``i = start_bin .. len(hist)`` at once (see ``entropy2_amax``), in float64.

    Everything is prefix sums; the one per-cut, per-group sum runs in a compiled loop (``engine="numba"``,
    ~5x less CPU than the vectorised numpy form, which stays available as ``engine="numpy"``).
    """
    counts, _ = _as_hist(hist, edges)
    counts = counts.copy()
    if counts.size > 1:
        counts[0] = counts[1]  # TensorRT/modelopt ignore the zero bin: it is mostly exact zeros (ReLU, padding)
    total = counts.sum()
    bounds = _cut_boundaries(counts.size, start_bin, num_quant_bins)
    cuts = bounds[:, -1]

    # Prefix sums turn every per-cut sum into two lookups; counts are integers, so they are exact in float64.
    csum = np.concatenate(([0.0], np.cumsum(counts)))
    nonzero = np.concatenate(([0], np.cumsum(counts > 0))).astype(np.float64)
    plogp = counts * np.log(np.maximum(counts, _TINY))
    plogp_sum = np.concatenate(([0.0], np.cumsum(plogp)))

    # P: the first i bins with the tail (bins >= i) folded into bin i-1.
    kept = csum[cuts]
    tail = total - kept
    last = counts[cuts - 1]
    p_last = last + tail
    p_log_p = plogp_sum[cuts - 1] + p_last * np.log(np.maximum(p_last, _TINY))
    undefined = kept <= 0                      # Q all zero: scipy gives NaN
    infinite = (last == 0) & (tail > 0)        # P > 0 where Q == 0

    # Only cuts with a defined, finite KL need the expensive part.
    result = np.where(undefined, np.nan, np.where(infinite, np.inf, 0.0))
    live = np.flatnonzero(~undefined & ~infinite)
    if live.size == 0:
        return result
    rows = np.ascontiguousarray(bounds[live])
    if engine == "numba":
        terms, last_level = entropy_q_terms(csum, nonzero, rows)
    else:
        terms, last_level = _q_log_terms(csum, nonzero, rows)
    rest = tail[live]
    p_log_q = terms + np.where(rest > 0, rest * np.log(np.where(rest > 0, last_level, 1.0)), 0.0)
    # KL with both sides normalised (as scipy.stats.entropy): sum(P) = total, sum(Q) = kept.
    result[live] = (p_log_p[live] - p_log_q) / total + np.log(kept[live] / total)
    return result


def entropy2_bin(hist: np.ndarray, edges: np.ndarray, *, num_quant_bins: int = 128, start_bin: int = 128,
                 skip_undefined: bool = False) -> int:
    """Index ``i`` of the chosen cut (``amax = edges[i]``); see ``entropy2_amax``."""
    counts, bounds = _as_hist(hist, edges)
    if start_bin < num_quant_bins:
        raise QuantError(f"entropy2 start_bin {start_bin} is below num_quant_bins {num_quant_bins}",
                         "use start_bin >= num_quant_bins (TensorRT uses 128 and 128)")
    if counts.size < start_bin:
        return counts.size  # too few bins to search: nothing to clip
    if not skip_undefined and counts[1:start_bin].sum() == 0 and (counts.size < 2 or counts[1] == 0):
        # the first cut has no data below it: KL is undefined (NaN) there and modelopt's argmin picks the last NaN
        kept = np.cumsum(np.r_[counts[1], counts[1:]])[start_bin - 1:]
        if not (kept > 0).all():
            return start_bin + int(np.flatnonzero(kept <= 0)[-1])
    divergence = entropy2_divergences(counts, bounds, num_quant_bins=num_quant_bins, start_bin=start_bin)
    if skip_undefined and not np.isnan(divergence).all():
        divergence = np.where(np.isnan(divergence), np.inf, divergence)
    return start_bin + _last_argmin(divergence)


def entropy2_amax(hist: np.ndarray, edges: np.ndarray, *, num_quant_bins: int = 128, start_bin: int = 128,
                  skip_undefined: bool = False) -> float:
    """TensorRT's Entropy2 (KL-divergence) threshold on a ``|x|`` histogram.

    For each cut ``i`` (``start_bin .. len(hist)``): P is the first ``i`` bins with the tail mass folded into bin
    ``i-1``; Q merges those ``i`` bins into ``num_quant_bins`` groups and spreads each group's mass evenly over its
    non-empty bins. The cut with the smallest KL(P||Q) wins (the last one on ties, as modelopt), ``amax = edges[i]``.
    Like modelopt there is no smoothing: a cut whose last bin is empty while data lies beyond it scores infinity,
    and a cut with no data below it is undefined (NaN) — and modelopt's argmin *picks* NaN, so a tensor without
    values near 0 (a Sigmoid output in (0.3, 1)) gets amax at the start of its data. That is kept by default for
    parity; ``skip_undefined=True`` ignores such cuts instead.
    All cuts from prefix sums in one compiled pass: a few ms per 2048-bin histogram against seconds for
    modelopt's ``_compute_amax_entropy`` loop (benchmarks/calibration.py prints both).
    """
    counts, bounds = _as_hist(hist, edges)
    index = entropy2_bin(counts, bounds, num_quant_bins=num_quant_bins, start_bin=start_bin,
                         skip_undefined=skip_undefined)
    return float(bounds[index])


def percentile_amax(hist: np.ndarray, edges: np.ndarray, percentile: float = 99.99) -> float:
    """The value below which ``percentile`` % of ``|x|`` lies, interpolated linearly inside its bin.

    modelopt returns the crossing bin's left edge; interpolating makes the result continuous and monotonic in
    ``percentile`` and lets ``percentile=100`` give the top of the data.
    """
    if not 0.0 < percentile <= 100.0:
        raise QuantError(f"percentile {percentile} is outside (0, 100]", "pass e.g. --percentile 99.99")
    counts, bounds = _as_hist(hist, edges)
    total = counts.sum()
    if total <= 0:
        return 0.0
    cumulative = np.cumsum(counts)
    target = total * percentile / 100.0
    k = min(int(np.searchsorted(cumulative, target, side="left")), counts.size - 1)
    before = cumulative[k - 1] if k > 0 else 0.0
    fraction = (target - before) / counts[k] if counts[k] > 0 else 1.0
    return float(bounds[k] + min(max(fraction, 0.0), 1.0) * (bounds[k + 1] - bounds[k]))


def mse_amax(hist: np.ndarray, edges: np.ndarray, *, num_bits: int = 8, start_bin: int = 128,
             chunk: int = 256) -> float:
    """The bin centre that minimises the mean squared error of symmetric ``num_bits`` fake quantisation.

    Data in each bin is taken at the bin centre (as modelopt's ``_compute_amax_mse``); candidates are the centres
    from ``start_bin`` on. Evaluated in chunks of candidates to bound memory (``chunk x bins`` floats).
    """
    counts, bounds = _as_hist(hist, edges)
    if num_bits < 2:
        raise QuantError(f"mse calibration needs num_bits >= 2, got {num_bits}", "use num_bits=8")
    centers = (bounds[1:] + bounds[:-1]) / 2.0
    candidates = centers[start_bin:]
    occupied = counts > 0
    if not occupied.any() or bounds[-1] <= 0:
        return 0.0
    centers, counts = centers[occupied], counts[occupied]  # empty bins add no error: skip them
    candidates = candidates[candidates > 0]
    if candidates.size == 0:  # fewer bins than start_bin, or all data at 0
        candidates = centers[-1:]
    levels = float((1 << (num_bits - 1)) - 1)
    errors = np.empty(candidates.size)
    for lo in range(0, candidates.size, chunk):
        amax = candidates[lo:lo + chunk, None]
        step = amax / levels
        quantized = np.minimum(np.round(centers[None, :] / step), levels) * step
        errors[lo:lo + chunk] = ((quantized - centers[None, :]) ** 2 * counts[None, :]).sum(axis=1)
    return float(candidates[int(np.argmin(errors))])


def _entropy2(stats: TensorStats, **options: Any) -> float:
    return entropy2_amax(stats.hist, stats.edges, **options)


def _percentile(stats: TensorStats, **options: Any) -> float:
    return percentile_amax(stats.hist, stats.edges, **options)


def _mse(stats: TensorStats, **options: Any) -> float:
    return mse_amax(stats.hist, stats.edges, **options)


@dataclass(frozen=True)
class CalibratorSpec:
    """One calibration method: everything the rest of the package needs to know about it."""

    name: str
    amax: Callable[..., float]  # (TensorStats, **options) -> amax
    # Algorithm word of the cache header. TensorRT ignores a cache whose word differs from the calibrator reading it
    # (NVIDIA/TensorRT#1378). Methods without a TensorRT calibrator are labelled EntropyCalibration2: that is the
    # calibrator trtexec (--calib) and our TensorRT backend use to *read* a foreign cache, and a read cache skips
    # calibration entirely, so the scales are used as written.
    trt_algorithm: str
    # Build options passed to ``amax`` as keywords: field names of VisionConfig and CompareOptions
    # (they change the result, so they are also recorded in the cache provenance).
    options: tuple[str, ...] = ()
    compared: bool = True  # in `vision-quant compare`'s default set

    def options_from(self, source: Any) -> dict[str, Any]:
        """This method's options, read from a config object (``VisionConfig``, ``CompareOptions``)."""
        return {name: getattr(source, name) for name in self.options}


CALIBRATORS: dict[str, CalibratorSpec] = {spec.name: spec for spec in (
    CalibratorSpec("minmax", minmax_amax, "MinMaxCalibration"),
    CalibratorSpec("entropy2", _entropy2, "EntropyCalibration2"),
    CalibratorSpec("percentile", _percentile, "EntropyCalibration2", options=("percentile",)),
    CalibratorSpec("mse", _mse, "EntropyCalibration2", compared=False),
)}
CALIBRATOR_NAMES: tuple[str, ...] = tuple(CALIBRATORS)
COMPARED: tuple[str, ...] = tuple(name for name, spec in CALIBRATORS.items() if spec.compared)


def calibrator_spec(method: str) -> CalibratorSpec:
    try:
        return CALIBRATORS[method]
    except KeyError:
        raise QuantError(f"unknown calibrator '{method}'",
                         f"choose one of: {', '.join(sorted(CALIBRATORS))}") from None


def compute_amax(stats: TensorStats, method: str, **options: Any) -> float:
    """``amax`` of one tensor with the named calibrator (``options`` go to its function)."""
    calibrate = calibrator_spec(method).amax
    try:
        return calibrate(stats, **options)
    except TypeError as exc:  # an option the method does not take
        raise QuantError(f"calibrator '{method}' got an unknown option ({exc})",
                         f"options accepted: see vision.calibration.calibrators.{calibrate.__name__}") from exc


def compute_all(stats: Mapping[str, TensorStats], method: str, *, workers: int | None = None,
                **options: Any) -> dict[str, float]:
    """``amax`` for every tensor, in the order of ``stats``. The searches are numpy-bound (the GIL is released),
    so ``workers`` threads (default: CPU count) run tensors side by side."""
    calibrator_spec(method)
    names = list(stats)
    count = workers or os.cpu_count() or 1
    if count == 1 or len(names) < 8:
        return {name: compute_amax(stats[name], method, **options) for name in names}
    with ThreadPoolExecutor(max_workers=count) as pool:
        values = list(pool.map(lambda name: compute_amax(stats[name], method, **options), names))
    return dict(zip(names, values, strict=True))
