"""The small-M kernels (decode) compute what the unfused reference computes: the activation quantized as modelopt's
fake quantization does, int8 / e4m3 products accumulated in fp32, then the scales. Every candidate the runtime may
choose at load (:data:`kernels.ONE_ROW` for one row, :data:`kernels.FEW_ROWS` for 2-16) is checked."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

M, K, N = 5, 1024, 384


def _inputs():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=gen).to(torch.bfloat16)
    x[1, 7] = 40.0  # one outlier channel, as LLM activations have
    pre = torch.rand(K, device="cuda", generator=gen) + 0.5
    w8 = torch.randint(-127, 128, (N, K), device="cuda", dtype=torch.int8, generator=gen)
    w_scale = torch.rand(N, device="cuda", generator=gen) * 1e-2
    bias = torch.randn(N, device="cuda", generator=gen)
    return x, pre, w8, w_scale, bias


def _close(got, want):
    want = want.float()
    err = (got.float() - want).abs().max().item()
    assert err <= 8e-3 * want.abs().max().item(), err


@pytest.mark.parametrize("act", ["none", "per_tensor", "per_token"])
def test_int8_weights(act):
    from llm_quant.runtime.cuda import kernels

    x, pre, w8, w_scale, bias = _inputs()
    v = x.float() * pre
    if act == "none":
        a, row = (x.float() * pre).to(torch.bfloat16).float(), torch.ones(M, 1, device="cuda")
        got = kernels.small_m_gemm(x, w8, w_scale, act=kernels.ACT_NONE, pre=pre, bias=bias)
    else:
        amax = v.abs().amax(-1, keepdim=True) if act == "per_token" else torch.full((M, 1), 3.0, device="cuda")
        qmin = -128.0 if act == "per_tensor" else -127.0
        a = torch.round(v * (127.0 / amax)).clamp(qmin, 127)
        row = amax / 127.0
        kind = kernels.ACT_INT8_TOKEN if act == "per_token" else kernels.ACT_INT8_TENSOR
        got = kernels.small_m_gemm(x, w8, w_scale, act=kind, pre=pre, act_factor=127.0 / 3.0, act_scale=3.0 / 127.0,
                                   qmin=qmin, bias=bias)
    want = (a @ w8.float().t()) * w_scale * row + bias
    assert got.dtype == torch.bfloat16 and got.shape == (M, N)
    _close(got, want)


def test_fp8_matches_scaled_mm():
    from llm_quant.runtime.cuda import kernels

    if torch.cuda.get_device_capability(0) < (8, 9):
        pytest.skip("FP8 needs SM >= 8.9")
    x, pre, _, _, bias = _inputs()
    w = torch.randn(N, K, device="cuda")
    w_scale = (w.abs().max() / 448.0).reshape(())
    w_fp8 = (w / w_scale).to(torch.float8_e4m3fn)
    factor, a_scale = 448.0 / 6.0, 6.0 / 448.0
    q = kernels.fp8_quantize(x, pre, factor)
    want = torch._scaled_mm(q, w_fp8.t(), scale_a=torch.tensor(a_scale, device="cuda"), scale_b=w_scale,
                            bias=bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
    got = kernels.small_m_gemm(x, w_fp8, w_scale, act=kernels.ACT_FP8, pre=pre, act_factor=factor,
                               act_scale=a_scale, bias=bias.to(torch.bfloat16))
    _close(got, want)


def test_more_than_16_rows_is_refused():
    from llm_quant.runtime.cuda import kernels

    x, _, w8, w_scale, _ = _inputs()
    with pytest.raises(ValueError, match="at most 16 rows"):
        kernels.small_m_gemm(torch.cat([x] * 4), w8, w_scale, act=kernels.ACT_NONE)


def _candidates(act):
    from dataclasses import replace

    from llm_quant.runtime.cuda import kernels

    one = list(kernels.ONE_ROW)
    if act == "per_token":
        one += [replace(c, prequant=True) for c in kernels.ONE_ROW if c.kernel == "gemv"]
    return [(1, c) for c in one] + [(M, c) for c in kernels.FEW_ROWS]


@pytest.mark.parametrize("act", ["none", "per_tensor", "per_token", "fp8"])
def test_every_small_m_candidate(act):
    """Each candidate on one row and on M rows (bias, pre-scale, an outlier, N and K not multiples of the blocks)."""
    from llm_quant.runtime.cuda import kernels

    if act == "fp8" and torch.cuda.get_device_capability(0) < (8, 9):
        pytest.skip("FP8 needs SM >= 8.9")
    x, pre, w8, w_scale, bias = _inputs()
    x, pre, w8, w_scale = x[:, :1000], pre[:1000], w8[:376, :1000].contiguous(), w_scale[:376]
    bias = bias[:376]
    v = x.float() * pre
    opts = {"pre": pre, "bias": bias}
    if act == "fp8":
        w = torch.randn(376, 1000, device="cuda")
        w_scale = (w.abs().max() / 448.0).reshape(())
        w8 = (w / w_scale).to(torch.float8_e4m3fn)
        factor = 448.0 / 6.0
        a = (v * factor).clamp(-448, 448).to(torch.float8_e4m3fn).float()
        want = (a @ w8.float().t()) * w_scale * (6.0 / 448.0) + bias
        opts.update(act=kernels.ACT_FP8, act_factor=factor, act_scale=6.0 / 448.0)
    elif act == "none":
        a = v.to(torch.bfloat16).float()
        want = (a @ w8.float().t()) * w_scale + bias
        opts.update(act=kernels.ACT_NONE)
    elif act == "per_tensor":
        a = torch.round(v * (127.0 / 3.0)).clamp(-128, 127)
        want = (a @ w8.float().t()) * w_scale * (3.0 / 127.0) + bias
        opts.update(act=kernels.ACT_INT8_TENSOR, act_factor=127.0 / 3.0, act_scale=3.0 / 127.0, qmin=-128.0)
    else:
        amax = v.abs().amax(-1, keepdim=True)
        a = torch.round(v * (127.0 / amax)).clamp(-127, 127)
        want = (a @ w8.float().t()) * w_scale * (amax / 127.0) + bias
        opts.update(act=kernels.ACT_INT8_TOKEN)
    wrong = []
    for rows, how in _candidates(act):
        got = kernels.small_m(how, x[1:1 + rows] if rows == 1 else x, w8, w_scale, **opts)
        ref = want[1:1 + rows] if rows == 1 else want
        err = ((got.float() - ref).abs().max() / ref.abs().max()).item()
        if got.shape != ref.shape or got.dtype != torch.bfloat16 or not err <= 8e-3:
            wrong.append(f"{how.label} x{rows}: {err:.2e}")
    assert not wrong, wrong


def test_choice_is_one_of_the_candidates():
    from llm_quant.runtime.cuda import kernels

    _, _, w8, w_scale, _ = _inputs()
    one = kernels.choose_small_m(w8, w_scale, act=kernels.ACT_INT8_TOKEN, rows=1)
    few = kernels.choose_small_m(w8, w_scale, act=kernels.ACT_INT8_TOKEN, rows=8)
    assert one.kernel in {"unsplit", "gemv", "cores"} and few in kernels.FEW_ROWS


def test_time_ms_measures_the_kernel_in_a_graph():
    """The load-time choice's clock: a one-row GEMM over twice the weight bytes takes longer (both come from HBM:
    each call is timed after an L2-evicting read, whose own time is subtracted), and neither is lost in the 64 MiB
    read's time."""
    from llm_quant.runtime.cuda import kernels

    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    small = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    large = torch.randn(4 * 4096, 4096, device="cuda", dtype=torch.bfloat16)
    small_ms = kernels.time_ms(lambda: x @ small.t())
    large_ms = kernels.time_ms(lambda: x @ large.t())
    assert 0 < small_ms < large_ms, (small_ms, large_ms)
    # 4x the bytes, and the L2 sweep keeps both reading HBM: a cached 32 MiB weight (H100 L2: 50 MiB) would run at L2
    # speed, many times faster. Not 4x: a 4096-row GEMV fills the card less well (H100, 2026-12-07: 40 µs, 70 µs)
    assert large_ms > 1.5 * small_ms, (small_ms, large_ms)
