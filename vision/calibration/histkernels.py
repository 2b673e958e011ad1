"""Compiled counting kernels for ``vision.calibration.stats`` (numba, GIL released so several tensors count at once).

Why hand-written: one pass that bins, takes min and max costs ~1 ns per value, against ~6.5 ns for the numpy
equivalent (``right_shift`` + ``bincount`` + ``min`` + ``max``; 8e6 float32 values on the dev machine), and the
collector touches ~60 M values per 640x640 YOLOv8n image.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Fine bins: |x| keyed by its float32 bits >> 13 (8 exponent + 10 mantissa bits), covering [2^-32, 2^32);
# index 0 = underflow [0, 2^-32), index FINE_BINS-1 = overflow [2^32, inf).
_SHIFT = 13
_LOW_KEY = (127 - 32) << 10
_HIGH_KEY = (127 + 32) << 10
_INNER = _HIGH_KEY - _LOW_KEY
FINE_BINS = _INNER + 2


@njit(nogil=True, cache=True, boundscheck=False)
def fine_update(values: np.ndarray, counts: np.ndarray) -> tuple[float, float, int]:  # pragma: no cover - compiled
    bits = values.view(np.uint32)
    low = np.inf
    high = -np.inf
    nonfinite = 0
    for i in range(values.size):
        magnitude = bits[i] & np.uint32(0x7FFFFFFF)
        if magnitude >= np.uint32(0x7F800000):
            nonfinite += 1
        key = np.int64(magnitude >> np.uint32(_SHIFT)) - _LOW_KEY
        if key < 0:
            counts[0] += 1
        elif key >= _INNER:
            counts[_INNER + 1] += 1
        else:
            counts[key + 1] += 1
        value = values[i]
        if value < low:
            low = value
        if value > high:
            high = value
    return float(low), float(high), nonfinite


@njit(nogil=True, cache=True, boundscheck=False)
def min_max(values: np.ndarray) -> tuple[float, float, int]:  # pragma: no cover - compiled
    low = np.inf
    high = -np.inf
    nonfinite = 0
    for i in range(values.size):
        value = values[i]
        if not np.isfinite(value):
            nonfinite += 1
            continue
        if value < low:
            low = value
        if value > high:
            high = value
    return float(low), float(high), nonfinite


@njit(nogil=True, cache=True, boundscheck=False)
def linear_update(values: np.ndarray, counts: np.ndarray, inverse_width: float) -> None:  # pragma: no cover
    top = counts.size - 1
    for i in range(values.size):
        position = abs(values[i]) * inverse_width
        if position >= top:
            if position == position:  # NaN fails every comparison
                counts[top] += 1
        elif position >= 0.0:
            counts[int(position)] += 1


def fine_bin_bounds(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[low, high)`` in float64 of the given fine-bin indices (ascending indices give ascending bounds)."""
    indices = np.asarray(indices, dtype=np.int64)
    keys = np.clip(indices - 1 + _LOW_KEY, _LOW_KEY, _HIGH_KEY - 1).astype(np.uint32)
    low = (keys << np.uint32(_SHIFT)).view(np.float32).astype(np.float64)
    high = ((keys + np.uint32(1)) << np.uint32(_SHIFT)).view(np.float32).astype(np.float64)
    underflow, overflow = indices == 0, indices == FINE_BINS - 1
    low[underflow], high[underflow] = 0.0, 2.0**-32
    low[overflow], high[overflow] = 2.0**32, np.inf
    return low, high


def fine_keys_numpy(values: np.ndarray) -> np.ndarray:
    """Fine-bin index of each value, in plain numpy (the reference the kernel is tested against)."""
    magnitude = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32) & np.uint32(0x7FFFFFFF)
    key = (magnitude >> np.uint32(_SHIFT)).astype(np.int64) - _LOW_KEY
    return np.where(key < 0, 0, np.where(key >= _INNER, _INNER + 1, key + 1))


@njit(nogil=True, cache=True, boundscheck=False)
def entropy_q_terms(mass_prefix: np.ndarray, nonzero_prefix: np.ndarray,
                    bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Per cut (row of ``bounds``): ``sum_g G_g log(G_g / N_g)`` over its groups and the last group's level G/N.

    ``G``/``N``: mass and non-empty bin count of a group, from prefix sums at the group boundaries. The same sums
    as ``vision.calibration.calibrators._q_log_terms`` in numpy, without its ``cuts x groups`` temporaries: 3.2 ms against
    17-21 ms of CPU per 2048-bin histogram on the dev machine.
    """
    rows, columns = bounds.shape
    terms = np.empty(rows)
    last_level = np.empty(rows)
    for row in range(rows):
        total = 0.0
        for group in range(columns - 1):
            start, stop = bounds[row, group], bounds[row, group + 1]
            mass = mass_prefix[stop] - mass_prefix[start]
            if mass > 0.0:
                total += mass * np.log(mass / (nonzero_prefix[stop] - nonzero_prefix[start]))
        terms[row] = total
        start, stop = bounds[row, columns - 2], bounds[row, columns - 1]
        count = nonzero_prefix[stop] - nonzero_prefix[start]
        last_level[row] = (mass_prefix[stop] - mass_prefix[start]) / count if count > 0 else 0.0
    return terms, last_level
