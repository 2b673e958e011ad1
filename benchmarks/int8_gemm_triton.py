"""A Triton W8A8 GEMM for prefill-sized inputs, benchmarked by ``benchmarks/int8_prefill_gpu.py`` before it may move
into the runtime: int8 activations [M, K] (per-token codes) times int8 weights [N, K] (per-channel codes), int32
accumulation on the tensor cores (exact: |sum| <= 127 * 127 * K < 2**31 for K < 133,000), both scales applied in the
epilogue, bf16 out. Imported only on a machine with Triton (CUDA builds of torch)."""

# mypy: ignore-errors
# (Triton's jit functions are typed by Triton's own rules, not Python's)

from __future__ import annotations

from typing import Any

import triton
import triton.language as tl

# tile shapes around Triton's matmul tutorial's Hopper choices, int8 taking twice the K of fp16 per byte budget
CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
           for m, n, k, w, s in ((128, 128, 128, 8, 4), (128, 256, 128, 8, 3), (128, 128, 64, 4, 4),
                                 (64, 128, 128, 4, 4), (128, 64, 128, 4, 4), (256, 128, 128, 8, 3))]


@triton.autotune(configs=CONFIGS, key=["M", "N", "K"])
@triton.jit
def int8_gemm_kernel(a_ptr, b_ptr, row_scale_ptr, col_scale_ptr, bias_ptr, c_ptr, M, N, K, stride_am, stride_bn,
                     stride_cm, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    # grouped order: GROUP_M row blocks share each weight tile while it is in L2
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * num_pid_n
    first_m = (pid // in_group) * GROUP_M
    group_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_m
    pid_n = (pid % in_group) // group_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_n[None, :] * stride_bn + offs_k[:, None]  # [BLOCK_K, BLOCK_N] of the K-major weight
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0)
        b = tl.load(b_ptrs, mask=(offs_n[None, :] < N) & k_ok[:, None], other=0)
        acc += tl.dot(a, b, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    row_ok = offs_m < M
    col_ok = offs_n < N
    row_scale = tl.load(row_scale_ptr + offs_m, mask=row_ok, other=0.0)
    col_scale = tl.load(col_scale_ptr + offs_n, mask=col_ok, other=0.0)
    y = acc.to(tl.float32) * row_scale[:, None] * col_scale[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :], y.to(tl.bfloat16),
             mask=row_ok[:, None] & col_ok[None, :])


def int8_gemm(q: Any, row_scale: Any, weight_q: Any, w_scale: Any, bias: Any = None) -> Any:
    """``(q @ weight_q.T) * row_scale[:, None] * w_scale[None, :] (+ bias)`` in bf16: q [M, K] int8, row_scale [M]
    fp32, weight_q [N, K] int8, w_scale [N] fp32."""
    import torch

    m, k = q.shape
    n = weight_q.shape[0]
    out = torch.empty((m, n), device=q.device, dtype=torch.bfloat16)

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    int8_gemm_kernel[grid](q, weight_q, row_scale, w_scale, bias if bias is not None else w_scale, out, m, n, k,
                           q.stride(0), weight_q.stride(0), out.stride(0), HAS_BIAS=bias is not None)
    return out
