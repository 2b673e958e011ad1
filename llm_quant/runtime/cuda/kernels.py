"""GPU kernels the CUDA runtime (:mod:`llm_quant.runtime.cuda.linear`) needs beyond PyTorch's own.

- :func:`small_m_gemm`: ``x @ W.T`` for a few rows ``x`` (decode) and int8 or e4m3 ``W``, written in Triton: decode is
  bound by reading the weights, and cuBLAS has no int8-weight x bf16 GEMM, so the weights are read once and
  converted in registers (half the bytes of a bf16 weight). Products run on bf16 tensor cores with fp32
  accumulation: exact for int8 / e4m3 weights and for activations that are integers up to 127 (W8A8) or e4m3
  codes (FP8). The activation's quantization and the output scales are fused into it: unfused, int8_sq decode
  ran at 0.60x bf16 on an H100 (8B shape) with the GEMM alone in Triton.
- :func:`fp8_quantize`: ``e4m3(clamp(x * pre * 448 / amax))`` in one pass (Triton); the same operations in torch
  took four kernels and an fp32 copy of the activation per linear group, which ate FP8's gain (measured on an
  H100, 8B shape: FP8 decode 1.11x bf16, prefill 0.95x, with the torch version).
- :func:`int4_pack` / :func:`int4_agrees`: symmetric INT4 blocks in tinygemm's layout for
  ``torch._weight_int4pack_mm`` and a one-off check of the packed product against the dequantized one.
"""

from __future__ import annotations

import functools
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


def small_m_gemm_split(x: Any, weight: Any, w_scale: Any, *, act: int, pre: Any = None, act_factor: float = 0.0,
                       act_scale: float = 0.0, qmin: float = -127.0, bias: Any = None, out_dtype: Any = None,
                       use_dot: bool = False, block_n: int = 32, block_k: int = 256, split: int = 4,
                       num_warps: int = 4, num_stages: int = 3) -> Any:
    """:func:`small_m_gemm` with K cut into ``split`` slices (more programs in flight than N / block_n alone) and
    the product either on tensor cores (``use_dot``, 16-row tiles) or as multiply-adds on the CUDA cores; the
    slices' fp32 partial sums are added by a second kernel."""
    torch = _torch()
    triton, kernel = _jit("small_m_gemm_split")
    x = x.contiguous()
    m, k = x.shape
    if m > MAX_M:
        raise ValueError(f"small_m_gemm takes at most {MAX_M} rows, got {m}")
    n = weight.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=out_dtype or x.dtype)
    w_scale = w_scale.float().contiguous()
    k_per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    split = triton.cdiv(k, k_per_split)
    final = split == 1
    out = y if final else torch.empty((split, m, n), device=x.device, dtype=torch.float32)
    block_m = MAX_M if use_dot else max(1, triton.next_power_of_2(m))
    kernel[(triton.cdiv(n, block_n), split)](
        x, pre if pre is not None else x, weight, w_scale, bias if bias is not None else w_scale, out, m, n, k,
        k_per_split, x.stride(0), weight.stride(0), y.stride(0), float(act_factor), float(act_scale), float(qmin),
        ACT=act, HAS_PRE=pre is not None, W_PER_CHANNEL=w_scale.numel() > 1, HAS_BIAS=bias is not None,
        USE_DOT=use_dot, FINAL=final, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
        num_stages=num_stages)
    if not final:
        _, reduce = _jit("splitk_reduce")
        block = 1024
        reduce[(m, triton.cdiv(n, block))](out, bias if bias is not None else w_scale, y, m, n, split, y.stride(0),
                                           HAS_BIAS=bias is not None, BLOCK=block)
    return y


def time_ms(fn: Any, iters: int = 20) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (after two warm-up calls)."""
    torch = _torch()
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


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
