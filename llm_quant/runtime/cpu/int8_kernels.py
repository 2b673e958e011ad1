"""Compiled activation quantizers for ``llm_quant.runtime.cpu.int8_linear`` (numba, GIL released).

Why hand-written: quantizing a [256, 576] float32 activation with torch takes five passes (pre-scale multiply,
scale multiply, round, clamp, cast; 46 us at 2 threads here) against 14 us for this one pass on one thread, and a
256-token prefill quantizes 210 activations. The arithmetic is the reference's, step for step, in float32:
``v = x * pre_scale`` (a separate multiply; multiplying by 1.0 where there is no pre-scale is exact), then
``rint(v * scale)`` (round half to even, as torch.round) clamped to [qmin, 127]; so the integers are identical.
The per-token row amax is taken on the float bits (``|v|`` as int32 orders as the float does): the float max
reduction does not vectorize without fast-math and took 82 of the kernel's 96 us ([256, 576], one thread); on the
bits it takes 16 us, with the same result for every finite input.
``dequantize`` is the GEMM epilogue in one pass (int32 -> float32, x row scale, x column scale, + bias, in the
reference's order): torch took three passes, 52 us against 18 us for [256, 576] and 845 us against 102 us for
[256, 3072] on one thread; it also writes each member of a fused GEMM (q/k/v, gate/up) to its own contiguous block.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from quant_common.errors import require

AMAX_EPS = np.float32(2.0 ** -24)  # modelopt quantizes an amax at or below this to all zeros
QMAX = np.float32(127.0)


@functools.cache
def compiled() -> SimpleNamespace:
    """The kernels, compiled on first use (numba is imported here, not when the package is: ``llm-quant --help``
    should not pay for it)."""
    numba = require("numba", purpose="the int8 runtime's activation quantizers")

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def quantize_static(x: np.ndarray, pre_scale: np.ndarray, scale: np.float32, qmin: np.float32,
                        out: np.ndarray) -> None:  # pragma: no cover - compiled
        """out[i, j] = clamp(rint((x[i, j] * pre_scale[j]) * scale), qmin, 127): one per-tensor scale."""
        rows, cols = x.shape
        for i in range(rows):
            for j in range(cols):
                r = np.rint(np.float32(x[i, j] * pre_scale[j]) * scale)
                r = min(max(r, qmin), QMAX)
                out[i, j] = np.int8(r)


    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def quantize_per_token(x: np.ndarray, pre_scale: np.ndarray, out: np.ndarray,
                           row_amax: np.ndarray) -> None:  # pragma: no cover - compiled
        """Dynamic per-row int8: v = x * pre_scale; amax = max |v| over the row; scale = 127 / amax (0 where
        amax <= 2**-24); out = clamp(rint(v * scale), -127, 127). ``row_amax`` receives each row's amax (0 where the
        row quantized to zeros) for the dequantization."""
        rows, cols = x.shape
        v = np.empty(cols, dtype=np.float32)
        bits = v.view(np.int32)
        amax_bits = np.empty(1, dtype=np.int32)
        for i in range(rows):
            for j in range(cols):
                v[j] = np.float32(x[i, j] * pre_scale[j])
            top = np.int32(0)
            for j in range(cols):  # |v| as bits: sign bit cleared, an integer max (vectorizes)
                b = bits[j] & np.int32(0x7FFFFFFF)
                top = b if b > top else top
            amax_bits[0] = top
            amax = amax_bits.view(np.float32)[0]
            if amax <= AMAX_EPS:
                for j in range(cols):
                    out[i, j] = 0
                row_amax[i] = 0.0
                continue
            scale = np.float32(QMAX / amax)
            for j in range(cols):
                r = np.rint(np.float32(v[j] * scale))
                r = min(max(r, -QMAX), QMAX)
                out[i, j] = np.int8(r)
            row_amax[i] = amax

    @numba.njit(nogil=True, cache=True, boundscheck=False)
    def dequantize(acc: np.ndarray, row_amax: np.ndarray, per_row: bool, col_scale: np.ndarray, bias: np.ndarray,
                   has_bias: bool, bounds: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
        """y = float32(acc) [x (row_amax / 127) if per_row] x col_scale (+ bias), each product rounded to float32
        in that order, as torch computes ``acc * (row_amax / 127.0) * col_scale + bias``. Columns
        ``bounds[m]:bounds[m + 1]`` go to ``out[rows * bounds[m]:rows * bounds[m + 1]]`` as a row-major
        [rows, width] block (one block per member of a fused GEMM). One branch-free inner loop per case: with
        the branches inside, it did not vectorize (207 us instead of 18 us for [256, 576])."""
        rows = acc.shape[0]
        for m in range(bounds.shape[0] - 1):
            lo, hi = bounds[m], bounds[m + 1]
            width = hi - lo
            block = out[rows * lo:rows * hi].reshape((rows, width))
            cs = col_scale[lo:hi]
            b = bias[lo:hi] if has_bias else col_scale[lo:hi]
            for i in range(rows):
                a, d = acc[i, lo:hi], block[i]
                if per_row:
                    rs = np.float32(row_amax[i] / QMAX)
                    if has_bias:
                        for j in range(width):
                            d[j] = np.float32(np.float32(np.float32(a[j]) * rs) * cs[j]) + b[j]
                    else:
                        for j in range(width):
                            d[j] = np.float32(np.float32(a[j]) * rs) * cs[j]
                elif has_bias:
                    for j in range(width):
                        d[j] = np.float32(np.float32(a[j]) * cs[j]) + b[j]
                else:
                    for j in range(width):
                        d[j] = np.float32(a[j]) * cs[j]

    return SimpleNamespace(quantize_static=quantize_static, quantize_per_token=quantize_per_token,
                           dequantize=dequantize)
