"""GPU kernels the CUDA runtime (:mod:`llm_quant.runtime.cuda.linear`) needs beyond PyTorch's own.

- :func:`int8_weight_gemm`: ``x @ W.T`` for a few rows ``x`` (bf16) and int8 ``W``, written in Triton: decode is
  bound by reading the weights, and cuBLAS has no int8-weight x bf16 GEMM, so the int8 weights are read once and
  converted in registers (half the bytes of a bf16 weight). Products run on bf16 tensor cores with fp32
  accumulation: exact for int8 weights and for activations that are integers up to 127 (W8A8).
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


@functools.cache
def _int8_kernel() -> Any:
    triton = require("triton", purpose="the int8 decode kernel")
    tl = triton.language

    @triton.autotune(
        configs=[triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
                 for n, k, w, s in ((32, 256, 4, 4), (64, 256, 4, 4), (32, 512, 4, 3), (64, 128, 4, 4),
                                    (16, 512, 2, 4), (128, 128, 8, 3))],
        key=["N", "K"])
    @triton.jit
    def kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
            w = tl.load(w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None],
                        mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0)
            acc += tl.dot(x.to(tl.bfloat16), w.to(tl.bfloat16))
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc,
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

    return triton, kernel


def int8_weight_gemm(x: Any, weight_q: Any) -> Any:
    """fp32 ``x @ weight_q.T`` for ``x`` [M <= 16, K] (bf16) and ``weight_q`` [N, K] int8 (row-major)."""
    torch = _torch()
    triton, kernel = _int8_kernel()
    x = x.contiguous()
    m, k = x.shape
    n = weight_q.shape[0]
    y = torch.empty((m, n), device=x.device, dtype=torch.float32)
    kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](x, weight_q, y, m, n, k, x.stride(0),
                                                             weight_q.stride(0), y.stride(0), BLOCK_M=16)
    return y


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


@functools.cache
def _fp8_kernel() -> Any:
    triton = require("triton", purpose="the FP8 activation kernel")
    tl = triton.language

    @triton.jit
    def kernel(x_ptr, pre_ptr, y_ptr, n_cols, stride_x, stride_y, factor, HAS_PRE: tl.constexpr,
               BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = cols < n_cols
        x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
        if HAS_PRE:
            x = x * tl.load(pre_ptr + cols, mask=ok, other=0.0)
        x = tl.minimum(tl.maximum(x * factor, -448.0), 448.0)
        tl.store(y_ptr + row * stride_y + cols, x.to(tl.float8e4nv), mask=ok)

    return triton, kernel


def fp8_quantize(x: Any, pre: Any, factor: float) -> Any:
    """``e4m3(clamp(x * pre * factor, -448, 448))`` for ``x`` [M, K] (any float dtype; ``pre`` [K] fp32 or None),
    with ``factor = 448 / amax`` as modelopt computes it (fp32)."""
    torch = _torch()
    triton, kernel = _fp8_kernel()
    x = x.contiguous()
    m, k = x.shape
    y = torch.empty((m, k), device=x.device, dtype=torch.float8_e4m3fn)
    block = 1024
    kernel[(m, triton.cdiv(k, block))](x, pre if pre is not None else x, y, k, x.stride(0), y.stride(0), factor,
                                       HAS_PRE=pre is not None, BLOCK=block)
    return y
