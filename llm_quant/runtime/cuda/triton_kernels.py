"""The Triton kernels of the CUDA runtime, at module level so Triton resolves their names as globals. Imported only
by :mod:`llm_quant.runtime.cuda.kernels` on first use (Triton comes with CUDA builds of torch only); the wrappers
there say what each computes."""

# mypy: ignore-errors
# (Triton's jit functions are typed by Triton's own rules, not Python's)

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_half_even(t):
    """torch.round for ``t`` already clamped to integer bounds (so ``t + 0.5`` is exact)."""
    r = tl.floor(t + 0.5)
    return tl.where((r - t == 0.5) & (r - 2.0 * tl.floor(r * 0.5) != 0.0), r - 1.0, r)


@triton.autotune(
    configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
             for n, k, w, s in ((16, 256, 4, 4), (32, 256, 4, 4), (32, 128, 4, 5), (64, 128, 4, 4),
                                (16, 512, 4, 3), (32, 512, 8, 3), (64, 256, 8, 3))],
    key=["N", "K", "ACT"])
@triton.jit
def small_m_gemm(x_ptr, pre_ptr, w_ptr, w_scale_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                 act_factor, act_scale, qmin, ACT: tl.constexpr, HAS_PRE: tl.constexpr,
                 W_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < M
    row_factor = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_scale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if ACT == 2:  # per-token int8: each row's amax first (x is a few rows, re-read from L2)
        row_factor, row_scale = _row_amax_factor(x_ptr, pre_ptr, offs_m, row_ok, K, stride_xm, HAS_PRE, BLOCK_M,
                                                 BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=row_ok[:, None] & (offs_k[None, :] < K), other=0.0)
        pre = tl.zeros((BLOCK_K,), dtype=tl.float32)
        if HAS_PRE:
            pre = tl.load(pre_ptr + offs_k, mask=offs_k < K, other=0.0)
        # exact in bf16: integers up to 128, e4m3 codes, or the activation as the model holds it
        a = _quantized_activation(x, pre[None, :], row_factor[:, None], act_factor, qmin, ACT, HAS_PRE).to(tl.bfloat16)
        # no ``other``: Triton cannot cast a constant to fp8e4nv there; masked lanes are zeroed after the widening
        w_ok = (offs_n[None, :] < N) & (offs_k[:, None] < K)
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None], mask=w_ok)
        acc += tl.dot(a, tl.where(w_ok, w.to(tl.bfloat16), 0.0).to(tl.bfloat16))
    col_ok = offs_n < N
    acc = _output_scales(acc, w_scale_ptr, offs_n, col_ok, row_scale, act_scale, ACT, W_PER_CHANNEL)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def fp8_quantize(x_ptr, pre_ptr, y_ptr, n_cols, stride_x, stride_y, factor, HAS_PRE: tl.constexpr,
                 BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < n_cols
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_PRE:
        x = x * tl.load(pre_ptr + cols, mask=ok, other=0.0)
    x = tl.minimum(tl.maximum(x * factor, -448.0), 448.0)
    tl.store(y_ptr + row * stride_y + cols, x.to(tl.float8e4nv), mask=ok)


@triton.jit
def _output_scales(acc, w_scale_ptr, offs_n, col_ok, row_scale, act_scale, ACT: tl.constexpr,
                   W_PER_CHANNEL: tl.constexpr):
    """``acc`` [BLOCK_M, BLOCK_N] times the weight's scale (per output channel, or one) and the activation's (each
    row's for per-token int8, one for a per-tensor activation, none for ACT 0)."""
    if W_PER_CHANNEL:
        acc = acc * tl.load(w_scale_ptr + offs_n, mask=col_ok, other=0.0)[None, :]
    else:
        acc = acc * tl.load(w_scale_ptr)
    if ACT == 2:
        acc = acc * row_scale[:, None]
    elif ACT != 0:
        acc = acc * act_scale
    return acc


@triton.jit
def _row_amax_factor(x_ptr, pre_ptr, offs_m, row_ok, K, stride_xm, HAS_PRE: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """(127 / amax, amax / 127) of each row of ``x * pre`` over all of K (0 for an all-zero row)."""
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=row_ok[:, None] & (offs_k[None, :] < K), other=0.0).to(tl.float32)
        if HAS_PRE:
            v = v * tl.load(pre_ptr + offs_k, mask=offs_k < K, other=0.0)[None, :]
        amax = tl.maximum(amax, tl.max(tl.abs(v), axis=1))
    ok = amax > 2**-24
    factor = tl.where(ok, tl.math.div_rn(tl.full((BLOCK_M,), 127.0, tl.float32), tl.maximum(amax, 2**-24)), 0.0)
    scale = tl.where(ok, tl.math.div_rn(amax, tl.full((BLOCK_M,), 127.0, tl.float32)), 0.0)
    return factor, scale


@triton.jit
def _one_row_amax_factor(x_ptr, pre_ptr, K, HAS_PRE: tl.constexpr, BLOCK_K: tl.constexpr):
    """(127 / amax, amax / 127) of the row of ``x * pre`` at ``x_ptr`` (0 for an all-zero row); the maximum is kept
    per lane and reduced once."""
    amax_k = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_ptr + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        if HAS_PRE:
            v = v * tl.load(pre_ptr + offs_k, mask=offs_k < K, other=0.0)
        amax_k = tl.maximum(amax_k, tl.abs(v))
    amax = tl.max(amax_k, axis=0)
    ok = amax > 2**-24
    c127 = tl.zeros_like(amax) + 127.0  # div_rn (IEEE, as torch divides) takes tensors
    factor = tl.where(ok, tl.math.div_rn(c127, tl.maximum(amax, 2**-24)), 0.0)
    scale = tl.where(ok, tl.math.div_rn(amax, c127), 0.0)
    return factor, scale


@triton.jit
def _quantized_activation(x, pre, row_factor, act_factor, qmin, ACT: tl.constexpr, HAS_PRE: tl.constexpr):
    """The activation (a tile or one row) as the fake-quant model feeds it to the product, in fp32 (every value exact
    there); ``pre`` and ``row_factor`` come shaped to broadcast against ``x``."""
    v = x.to(tl.float32)
    if HAS_PRE:
        v = v * pre
    if ACT == 0:  # W8A16: the activation as the model holds it
        a = v.to(x.dtype).to(tl.float32)
    elif ACT == 1:
        a = round_half_even(tl.minimum(tl.maximum(v * act_factor, qmin), 127.0))
    elif ACT == 2:
        a = round_half_even(tl.minimum(tl.maximum(v * row_factor, qmin), 127.0))
    elif ACT == 3:  # FP8: e4m3 codes
        a = tl.minimum(tl.maximum(v * act_factor, -448.0), 448.0).to(tl.float8e4nv).to(tl.float32)
    else:  # int8 codes already (row_quantize)
        a = v
    return a


@triton.jit
def small_m_gemm_split(x_ptr, pre_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, M, N, K, K_PER_SPLIT, stride_xm,
                       stride_wn, stride_om, act_factor, act_scale, qmin, ACT: tl.constexpr, HAS_PRE: tl.constexpr,
                       W_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
                       FINAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (N block, K slice) of the small-M product, scaled: with ``FINAL`` (one slice) the output itself (bias
    added, cast), else fp32 partial sums at ``out_ptr[slice, m, n]`` for :func:`splitk_reduce`. ``USE_DOT`` runs the
    product on bf16 tensor cores (16-row tiles); without it, as broadcast multiply-adds on the CUDA cores."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < M
    col_ok = offs_n < N
    row_factor = tl.zeros((BLOCK_M,), dtype=tl.float32)
    row_scale = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if ACT == 2:  # per-token int8 needs each row's amax over all of K first (x is a few rows, read from L2)
        row_factor, row_scale = _row_amax_factor(x_ptr, pre_ptr, offs_m, row_ok, K, stride_xm, HAS_PRE, BLOCK_M,
                                                 BLOCK_K)
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_end
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        pre = tl.zeros((BLOCK_K,), dtype=tl.float32)
        if HAS_PRE:
            pre = tl.load(pre_ptr + offs_k, mask=k_ok, other=0.0)
        a = _quantized_activation(x, pre[None, :], row_factor[:, None], act_factor, qmin, ACT, HAS_PRE)
        if USE_DOT:
            # no ``other``: Triton cannot cast a constant to fp8e4nv there; masked lanes are zeroed after widening
            w_ok = col_ok[None, :] & k_ok[:, None]
            w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None], mask=w_ok)
            acc += tl.dot(a.to(tl.bfloat16), tl.where(w_ok, w.to(tl.float32), 0.0).to(tl.bfloat16))
        else:
            w_ok = col_ok[:, None] & k_ok[None, :]
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=w_ok)
            w = tl.where(w_ok, w.to(tl.float32), 0.0)
            acc += tl.sum(a[:, None, :] * w[None, :, :], axis=2)
    acc = _output_scales(acc, w_scale_ptr, offs_n, col_ok, row_scale, act_scale, ACT, W_PER_CHANNEL)
    out_ok = row_ok[:, None] & col_ok[None, :]
    if FINAL:
        if HAS_BIAS:
            acc = acc + tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=out_ok)
    else:
        tl.store(out_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=out_ok)


@triton.jit
def splitk_reduce(part_ptr, bias_ptr, y_ptr, M, N, SPLIT, stride_ym, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """``y[m] = sum over slices of part[slice, m] (+ bias)``, cast to y's dtype: the end of a split-K product."""
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(0, SPLIT):
        acc += tl.load(part_ptr + (s * M + m) * N + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def small_m_gemv(x_ptr, pre_ptr, row_scale_ptr, w_ptr, w_scale_ptr, bias_ptr, out_ptr, N, K, K_PER_SPLIT, stride_wn,
                 act_factor, act_scale, qmin, ACT: tl.constexpr, HAS_PRE: tl.constexpr, W_PER_CHANNEL: tl.constexpr,
                 HAS_BIAS: tl.constexpr, W_INT8: tl.constexpr, FINAL: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """One decode row: (N block, K slice) of ``x @ W.T`` on the CUDA cores, products accumulated element-wise and
    summed once at the end (no reduction per step). int8 weights are widened with the 2**23 trick (integer add +
    float subtract, exact for |w| <= 128) instead of the int-to-float conversion, which Hopper runs at a quarter of
    the FMA rate. ``ACT == 4``: ``x`` holds the row's int8 codes already (:func:`row_quantize`), its scale at
    ``row_scale_ptr``."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    row_factor = 0.0
    row_scale = 0.0
    if ACT == 2:  # per-token int8: the row's amax over all of K first (one row, read from L2)
        row_factor, row_scale = _one_row_amax_factor(x_ptr, pre_ptr, K, HAS_PRE, BLOCK_K)
    if ACT == 4:
        row_scale = tl.load(row_scale_ptr)
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < k_end
        if ACT == 4:  # int8 codes: an integer ``other``
            x = tl.load(x_ptr + offs_k, mask=k_ok, other=0)
        else:
            x = tl.load(x_ptr + offs_k, mask=k_ok, other=0.0)
        pre = tl.zeros((BLOCK_K,), dtype=tl.float32)
        if HAS_PRE:
            pre = tl.load(pre_ptr + offs_k, mask=k_ok, other=0.0)
        a = _quantized_activation(x, pre, row_factor, act_factor, qmin, ACT, HAS_PRE)
        w_ok = col_ok[:, None] & k_ok[None, :]
        if W_INT8:
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=w_ok, other=0)
            wf = (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
        else:
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], mask=w_ok)
            wf = tl.where(w_ok, w.to(tl.float32), 0.0)
        acc2 += wf * a[None, :]
    acc = tl.sum(acc2, axis=1)
    if W_PER_CHANNEL:
        acc = acc * tl.load(w_scale_ptr + offs_n, mask=col_ok, other=0.0)
    else:
        acc = acc * tl.load(w_scale_ptr)
    if ACT == 2 or ACT == 4:
        acc = acc * row_scale
    elif ACT != 0:
        acc = acc * act_scale
    if FINAL:
        if HAS_BIAS:
            acc = acc + tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=col_ok)
    else:
        tl.store(out_ptr + pid_k * N + offs_n, acc, mask=col_ok)


@triton.jit
def row_quantize(x_ptr, pre_ptr, q_ptr, scale_ptr, K, stride_xm, HAS_PRE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-token int8 of one row of ``x * pre``: ``q = round(clamp(v * 127 / amax))`` and ``scale = amax / 127``
    (0 for an all-zero row), as modelopt's dynamic per-token quantizer computes them."""
    row = tl.program_id(0)
    factor, scale = _one_row_amax_factor(x_ptr + row * stride_xm, pre_ptr, K, HAS_PRE, BLOCK_K)
    tl.store(scale_ptr + row, scale)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_ptr + row * stride_xm + offs_k, mask=offs_k < K, other=0.0).to(tl.float32)
        if HAS_PRE:
            v = v * tl.load(pre_ptr + offs_k, mask=offs_k < K, other=0.0)
        q = round_half_even(tl.minimum(tl.maximum(v * factor, -127.0), 127.0))
        tl.store(q_ptr + row * K + offs_k, q.to(tl.int8), mask=offs_k < K)
