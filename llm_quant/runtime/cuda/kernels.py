"""GPU kernels the CUDA runtime (:mod:`llm_quant.runtime.cuda.linear`) needs beyond PyTorch's own.

- :func:`small_m` (decode, up to 16 rows): ``x @ W.T`` for int8 or e4m3 ``W`` with the activation's quantization and
  the output scales fused in, written in Triton: decode is bound by reading the weights, and cuBLAS has no
  int8-weight x bf16 GEMM, so the weights are read once and widened in registers (half the bytes of a bf16 weight).
  Products are exact (int8 / e4m3 operands, integer or e4m3 activations) with fp32 accumulation. Several variants
  (:class:`SmallM`): the unsplit kernel (:func:`small_m_gemm`, one program per N block over all of K), split-K on
  tensor cores or CUDA cores, and a one-row GEMV; :func:`choose_small_m` times a short list on the card at load.
  On an H100 (8B shape) the unsplit kernel ran at 0.36-0.77x bf16 and split-K at 0.63-1.25x
  (benchmarks/small_m_sweep.py).
- :func:`fp8_quantize`: ``e4m3(clamp(x * pre * 448 / amax))`` in one pass (Triton); the same operations in torch
  took four kernels and an fp32 copy of the activation per linear group, which ate FP8's gain (measured on an
  H100, 8B shape: FP8 decode 1.11x bf16, prefill 0.95x, with the torch version).
- :func:`int4_pack` / :func:`int4_agrees`: symmetric INT4 blocks in tinygemm's layout for
  ``torch._weight_int4pack_mm`` and a one-off check of the packed product against the dequantized one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from quant_common.errors import require


def _torch() -> Any:
    return require("torch", purpose="the CUDA runtime")


@functools.cache  # looked up on every decode linear call outside graph replay: import once
def _jit(name: str) -> tuple[Any, Any]:
    """(triton, the named kernel of :mod:`llm_quant.runtime.cuda.triton_kernels`), imported on first use: Triton
    comes with CUDA builds of torch only."""
    triton = require("triton", purpose=f"the {name} kernel")
    from llm_quant.runtime.cuda import triton_kernels

    return triton, getattr(triton_kernels, name)


# what a small-M GEMM does to its activation before the product (``ACT``)
ACT_NONE, ACT_INT8_TENSOR, ACT_INT8_TOKEN, ACT_FP8 = 0, 1, 2, 3
ACT_INT8_CODES = 4  # the input is int8 codes already (row_quantize), its per-row scale passed along
MAX_M = 16  # rows the small-M kernel takes (decode; tl.dot's smallest tile)


def small_m_gemm(x: Any, weight: Any, w_scale: Any, *, act: int, pre: Any = None, act_factor: float = 0.0,
                 act_scale: float = 0.0, qmin: float = -127.0, bias: Any = None, out_dtype: Any = None) -> Any:
    """``y = act(x * pre) @ dequant(weight).T + bias`` for ``x`` [M <= 16, K] in one kernel: the activation is
    quantized as the fake-quant model does (``act``: ACT_NONE keeps it, ACT_INT8_TENSOR / ACT_INT8_TOKEN round it to
    integers with ``act_factor = 127 / amax`` or each row's own, ACT_FP8 casts ``x * act_factor`` to e4m3), multiplied
    by the int8 or e4m3 ``weight`` [N, K] on bf16 tensor cores (every operand exact in bf16) with fp32
    accumulation, then scaled by ``w_scale`` ([N] or a scalar) and the activation's scale (``act_scale``, or each
    row's ``amax / 127``). Decode reads each weight once and launches one kernel per linear, where the unfused path
    ran a quantization, a GEMM and two or three scaling kernels."""
    torch = _torch()
    triton, kernel = _jit("small_m_gemm")
    x = x.contiguous()
    m, k = x.shape
    if m > MAX_M:
        raise ValueError(f"small_m_gemm takes at most {MAX_M} rows, got {m}")
    n = weight.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=out_dtype or x.dtype)
    w_scale = w_scale.float().contiguous()
    kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
        x, pre if pre is not None else x, weight, w_scale, bias if bias is not None else w_scale, y, m, n, k,
        x.stride(0), weight.stride(0), y.stride(0), float(act_factor), float(act_scale), float(qmin),
        ACT=act, HAS_PRE=pre is not None, W_PER_CHANNEL=w_scale.numel() > 1, HAS_BIAS=bias is not None,
        BLOCK_M=MAX_M)
    return y


@dataclass(frozen=True)
class SmallM:
    """How a small-M product runs: ``unsplit`` (:func:`small_m_gemm`), ``dot`` / ``cores`` (split-K on tensor
    cores / CUDA cores, any rows), ``gemv`` (one row on the CUDA cores, optionally after :func:`row_quantize`)."""

    kernel: str = "unsplit"
    block_n: int = 0
    block_k: int = 0
    split: int = 1
    num_warps: int = 4
    prequant: bool = False  # gemv, per-token int8: quantize the row in its own kernel first

    @property
    def label(self) -> str:
        if self.kernel == "unsplit":
            return "unsplit"
        pre = "+row_quantize" if self.prequant else ""
        return f"{self.kernel}{pre} n{self.block_n} k{self.block_k} split{self.split} w{self.num_warps}"


def _split(k: int, block_k: int, split: int) -> tuple[int, int]:
    """(K per slice, rounded up to whole blocks so slices never overlap; the number of non-empty slices)."""
    per = _cdiv(_cdiv(k, split), block_k) * block_k
    return per, _cdiv(k, per)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def small_m(how: SmallM, x: Any, weight: Any, w_scale: Any, *, act: int, pre: Any = None, act_factor: float = 0.0,
            act_scale: float = 0.0, qmin: float = -127.0, bias: Any = None, out_dtype: Any = None) -> Any:
    """:func:`small_m_gemm`'s product computed the way ``how`` says. Split-K cuts K into slices (more programs in
    flight than N / block_n alone, which left the GPU's memory bandwidth idle); their fp32 partial sums, already
    scaled, are added by :func:`splitk_reduce`."""
    if how.kernel == "unsplit":
        return small_m_gemm(x, weight, w_scale, act=act, pre=pre, act_factor=act_factor, act_scale=act_scale,
                            qmin=qmin, bias=bias, out_dtype=out_dtype)
    torch = _torch()
    x = x.contiguous()
    m, k = x.shape
    if m > MAX_M or (how.kernel == "gemv" and m != 1):
        raise ValueError(f"small-M kernel {how.label} takes "
                         f"{'one row' if how.kernel == 'gemv' else f'at most {MAX_M} rows'}, got {m}")
    n = weight.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=out_dtype or x.dtype)
    w_scale = w_scale.float().contiguous()
    per, split = _split(k, how.block_k, how.split)
    final = split == 1
    out = y if final else torch.empty((split, m, n), device=x.device, dtype=torch.float32)
    common = dict(HAS_PRE=pre is not None, W_PER_CHANNEL=w_scale.numel() > 1, HAS_BIAS=bias is not None,
                  FINAL=final, BLOCK_N=how.block_n, BLOCK_K=how.block_k, num_warps=how.num_warps)
    grid = (_cdiv(n, how.block_n), split)
    bias_arg = bias if bias is not None else w_scale
    if how.kernel == "gemv":
        _, kernel = _jit("small_m_gemv")
        row_scale = w_scale
        if how.prequant and act == ACT_INT8_TOKEN:
            x, row_scale = row_quantize(x, pre)
            act, pre = ACT_INT8_CODES, None
            common["HAS_PRE"] = False
        kernel[grid](x, pre if pre is not None else x, row_scale, weight, w_scale, bias_arg, out, n, k, per,
                     weight.stride(0), float(act_factor), float(act_scale), float(qmin), ACT=act,
                     W_INT8=weight.dtype == torch.int8, **common)
    else:
        _, kernel = _jit("small_m_gemm_split")
        kernel[grid](x, pre if pre is not None else x, weight, w_scale, bias_arg, out, m, n, k, per, x.stride(0),
                     weight.stride(0), y.stride(0), float(act_factor), float(act_scale), float(qmin), ACT=act,
                     USE_DOT=how.kernel == "dot", BLOCK_M=MAX_M if how.kernel == "dot" else
                     max(1, 1 << (m - 1).bit_length()), **common)
    if not final:
        _, reduce = _jit("splitk_reduce")
        reduce[(m, _cdiv(n, 1024))](out, bias_arg, y, m, n, split, y.stride(0), HAS_BIAS=bias is not None,
                                   BLOCK=1024)
    return y


def row_quantize(x: Any, pre: Any = None) -> tuple[Any, Any]:
    """Per-token int8 codes of ``x * pre`` [M, K] and each row's scale ``amax / 127`` [M] (fp32)."""
    torch = _torch()
    _, kernel = _jit("row_quantize")
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), device=x.device, dtype=torch.int8)
    scale = torch.empty((m,), device=x.device, dtype=torch.float32)
    kernel[(m,)](x, pre if pre is not None else x, q, scale, k, x.stride(0), HAS_PRE=pre is not None, BLOCK_K=1024)
    return q, scale


# Candidates timed per weight shape at load: the best split-K configurations of benchmarks/small_m_sweep.py on an
# H100 (8B shape: cores n8-32 k512 for one row, dot n64 k256 split4 / n128 k128 split2 for 8 rows) and GEMV
# neighbours; the unsplit kernel stays one, so a choice never loses to what ran before.
ONE_ROW = (SmallM(), SmallM("gemv", 16, 512, 1), SmallM("gemv", 16, 512, 4), SmallM("gemv", 8, 512, 2),
           SmallM("gemv", 32, 512, 4, 8), SmallM("cores", 16, 512, 1), SmallM("cores", 32, 512, 4))
FEW_ROWS = (SmallM(), SmallM("dot", 64, 256, 4), SmallM("dot", 128, 128, 2), SmallM("dot", 64, 128, 2))
_CHOICE: dict[tuple[Any, ...], tuple[SmallM, float]] = {}


def choose_small_m(weight: Any, w_scale: Any, *, act: int, rows: int, pre: Any = None, act_factor: float = 1.0,
                   act_scale: float = 1.0, qmin: float = -127.0) -> SmallM:
    """The fastest way to multiply ``rows`` decode rows by this weight on this card, timed once per (card, shape,
    activation, rows) among :data:`ONE_ROW` / :data:`FEW_ROWS` (with ``prequant`` variants for per-token int8);
    every candidate computes the same products (integers / e4m3 codes, fp32 accumulation), only the order of the
    fp32 sums differs. A candidate that fails to compile or run here, or disagrees with the unsplit kernel on a
    random input, is skipped."""
    return choose_small_m_timed(weight, w_scale, act=act, rows=rows, pre=pre, act_factor=act_factor,
                                act_scale=act_scale, qmin=qmin)[0]


def choose_small_m_timed(weight: Any, w_scale: Any, *, act: int, rows: int, pre: Any = None,
                         act_factor: float = 1.0, act_scale: float = 1.0, qmin: float = -127.0) -> tuple[SmallM, float]:
    """:func:`choose_small_m`'s choice and its :func:`time_ms` (inf where no kernel ran here), for a caller that
    weighs it against another path without timing it again."""
    torch = _torch()
    n, k = weight.shape
    key = (torch.cuda.get_device_name(weight.device), n, k, str(weight.dtype), act, rows, pre is not None)
    if key in _CHOICE:
        return _CHOICE[key]
    candidates = list(ONE_ROW if rows == 1 else FEW_ROWS)
    if rows == 1 and act == ACT_INT8_TOKEN:
        candidates += [replace(c, prequant=True) for c in candidates if c.kernel == "gemv"]
    x = torch.randn(rows, k, device=weight.device, dtype=torch.bfloat16)

    def run(how: SmallM) -> Any:
        return small_m(how, x, weight, w_scale, act=act, pre=pre, act_factor=act_factor, act_scale=act_scale,
                       qmin=qmin)

    best, best_ms = SmallM(), float("inf")
    try:
        reference = run(best).float()  # the unsplit kernel, checked on H100/H200 by tests/gpu/test_kernels.py
    except Exception:  # noqa: BLE001 - no kernel runs here: keep the unsplit one (its call names the problem)
        return best, best_ms
    bound = 1e-2 * float(reference.abs().max().clamp_min(1e-6))
    for how in candidates:
        try:
            # a variant must agree with the unsplit kernel on this card before it may be chosen (only the order
            # of the fp32 sums differs); one that does not, or fails to compile here, is out
            if how != best and float((run(how).float() - reference).abs().max()) > bound:
                continue
            ms = time_ms(lambda h=how: run(h))
        except Exception:  # noqa: BLE001 - Triton raises its own compile errors; such a candidate is out
            continue
        if ms < best_ms:
            best, best_ms = how, ms
    _CHOICE[key] = best, best_ms
    return best, best_ms


def _eager_ms(fn: Any, iters: int) -> float:
    torch = _torch()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _graph_ms(calls: list[Any], replays: int = 5) -> float:
    """Median milliseconds of one replay of a CUDA graph of ``calls``."""
    torch = _torch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    return _eager_ms(graph.replay, replays)


# 64 MiB read before each timed call: more than the 50 MB L2 of an H100 / H200, so the weights come from HBM as they
# do in a decode step, whose previous layers' weights have just passed through L2
_L2_SWEEP_BYTES = 64 << 20


def time_ms(fn: Any, iters: int = 20) -> float:
    """Milliseconds of one ``fn()`` as a graph-captured decode step pays for it: ``iters`` calls captured in one
    CUDA graph, each after a 64 MiB read that evicts L2, less the time of those reads alone. Timed eagerly, a
    one-row GEMM of an 8B model (25-40 µs) measured launch gaps as much as the kernels: two-kernel paths (quantize +
    ``_scaled_mm``) lost to one fused kernel that was slower in the graph (benchmarks/results/small_m_sweep.md:
    ``_scaled_mm`` 24.1 µs against the fused kernel's 33.5 at K 4096, N 14336). Where capture fails, eager calls are
    timed (median, after two warm-up calls)."""
    torch = _torch()
    for _ in range(2):
        fn()
    try:
        sweep = torch.empty(_L2_SWEEP_BYTES // 4, device="cuda", dtype=torch.float32)
        sink = torch.empty((), device="cuda", dtype=torch.float32)

        def evict() -> None:
            torch.sum(sweep, out=sink)

        both = _graph_ms([c for _ in range(iters) for c in (evict, fn)])
        alone = _graph_ms([evict] * iters)
        return max(both - alone, 0.0) / iters
    except Exception:  # noqa: BLE001 - capture not possible here (a kernel that synchronizes, no graph support):
        torch.cuda.synchronize()  # a choice between correct kernels must not fail a load, so time them eagerly
        return _eager_ms(fn, iters)


def _inner_k_tiles(k: int) -> int:
    for tiles in (8, 4, 2):
        if k % (tiles * 16) == 0:
            return tiles
    raise ValueError(f"in_features {k} is not a multiple of 32 (tinygemm)")


def int4_pack(q: Any, scale: Any) -> tuple[Any, Any]:
    """``q`` [N, K] int32 in [-8, 7] and ``scale`` [N, K / block] -> (packed weight, scales_and_zeros) for
    ``torch._weight_int4pack_mm``: tinygemm dequantizes ``(u - 8) * scale + zero`` with ``u = q + 8`` in [0, 15]."""
    torch = _torch()
    u = (q + 8).to(torch.uint8)
    packed_bytes = (u[:, ::2] << 4 | u[:, 1::2]).contiguous()
    packed = torch._convert_weight_to_int4pack(packed_bytes, _inner_k_tiles(q.shape[1]))
    scales = scale.t().contiguous().to(torch.bfloat16)  # [K / block, N]
    scales_and_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=-1).contiguous()
    return packed, scales_and_zeros


def int4_agrees(packed: Any, scales_and_zeros: Any, q: Any, scale: Any, block: int) -> bool:
    """One product of the packed weight against the dequantized one (a layout mismatch shows as garbage)."""
    torch = _torch()
    try:
        n, k = q.shape
        x = torch.randn(4, k, device=q.device, dtype=torch.bfloat16)
        got = torch._weight_int4pack_mm(x, packed, block, scales_and_zeros).float()
        w = (q.reshape(n, -1, block).float() * scale.to(torch.bfloat16).float().unsqueeze(-1)).reshape(n, k)
        want = x.float() @ w.t()
        return bool(((got - want).abs().max() <= 2e-2 * want.abs().max().clamp_min(1e-3)).item())
    except (RuntimeError, ValueError):
        return False


def fp8_quantize(x: Any, pre: Any, factor: float) -> Any:
    """``e4m3(clamp(x * pre * factor, -448, 448))`` for ``x`` [M, K] (any float dtype; ``pre`` [K] fp32 or None),
    with ``factor = 448 / amax`` as modelopt computes it (fp32)."""
    torch = _torch()
    triton, kernel = _jit("fp8_quantize")
    x = x.contiguous()
    m, k = x.shape
    y = torch.empty((m, k), device=x.device, dtype=torch.float8_e4m3fn)
    block = 1024
    kernel[(m, triton.cdiv(k, block))](x, pre if pre is not None else x, y, k, x.stride(0), y.stride(0), factor,
                                       HAS_PRE=pre is not None, BLOCK=block)
    return y
