"""The W8A8 GEMM path of ``llm_quant.runtime.cpu.int8_linear``, and one GEMM for linears that read the same input.

``w8a8(...)``: quantize the rows once (``llm_quant.runtime.cpu.int8_kernels``), one ``torch._int_mm``, the
dequantizing epilogue in one pass. With several output blocks (``bounds``) it returns one contiguous tensor per
block.

``fuse_shared_inputs(model)``: q/k/v and gate/up of each decoder layer read the same tensor and, in an
``llm-quant build``, share one SmoothQuant pre-scale (``llm_quant.calibration.smoothing``), so their activation
integers are the same: TensorRT-LLM fuses them into one GEMM (``attention.qkv``, ``mlp.fc`` + ``mlp.gate``) and so
do we. The activation is quantized once per group and one int8 GEMM with the concatenated weights replaces three
(two); every member keeps its own integers and scales, so each output is bit for bit the unfused one. The first
member called computes the whole group; the others take their block if called with the same tensor object (the
caller, HF's attention or MLP forward, is not changed). Groups whose scales differ (modelopt's own per-linear
SmoothQuant) stay unfused.
"""

from __future__ import annotations

import threading
from typing import Any

from llm_quant.runtime.cpu import int8_kernels
from quant_common.errors import require

# Linears of one parent module that read the same input (Llama, Mistral, Qwen2, Gemma naming).
SHARED_INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
# Rows at or below this run the int8 GEMM on one thread. Measured here (torch 2.13, K=576, N=1536, 2 busy cores):
# M=1 takes 16-20 us on one thread but 0.014-13 ms on two (OpenMP fork/join waits on the loaded core), against
# 70-300 us for the FP32 GEMV; M=8 takes ~70 us on one thread. Switching the thread count costs < 1 us.
SINGLE_THREAD_ROWS = 16


def _torch() -> Any:
    return require("torch", purpose="the int8 runtime")


def int_mm(q: Any, weight_q: Any) -> Any:
    """int8 [M, K] x int8 [N, K].T -> int32 [M, N]; small M on one thread (see SINGLE_THREAD_ROWS)."""
    torch = _torch()
    threads = torch.get_num_threads()
    if q.shape[0] > SINGLE_THREAD_ROWS or threads == 1:
        return torch._int_mm(q, weight_q.t())  # the transposed view of the row-major weight ran fastest here
    torch.set_num_threads(1)
    try:
        return torch._int_mm(q, weight_q.t())
    finally:
        torch.set_num_threads(threads)


def w8a8(x: Any, layer: Any, bounds: Any) -> list[Any]:
    """``x`` [..., K] as float32 rows through ``layer``'s quantizer, weights and scales (an ``Int8Linear`` or a
    fused group: weight_q, out_scale, pre_scale, act_scale, qmin, per_token, bias); one [M, width] tensor per block
    of ``bounds`` (column offsets into the output), M the rows of ``x``."""
    torch = _torch()
    kernels = int8_kernels.compiled()
    flat = x.detach().reshape(-1, layer.weight_q.shape[1]).float().contiguous()
    rows = flat.shape[0]
    q = torch.empty(flat.shape, dtype=torch.int8)
    row_amax = torch.empty(rows if layer.per_token else 1)
    if layer.per_token:
        kernels.quantize_per_token(flat.numpy(), layer.pre_scale.numpy(), q.numpy(), row_amax.numpy())
    else:
        kernels.quantize_static(flat.numpy(), layer.pre_scale.numpy(), layer.act_scale.numpy()[()], layer.qmin,
                                q.numpy())
    acc = int_mm(q, layer.weight_q)
    out = torch.empty(rows * layer.weight_q.shape[0])
    bias = layer.bias
    kernels.dequantize(acc.numpy(), row_amax.numpy(), layer.per_token, layer.out_scale.numpy(),
                       row_amax.numpy() if bias is None else bias.numpy(), bias is not None, bounds.numpy(),
                       out.numpy())
    edges = bounds.tolist()
    return [out[rows * lo:rows * hi].view(rows, hi - lo) for lo, hi in zip(edges, edges[1:], strict=False)]


class SharedInputGroup:
    """One GEMM for the int8 linears ``members`` (same input, same quantizer): concatenated int8 weights, column
    scales and biases; each member's own ``weight_q`` / ``out_scale`` / ``bias`` become views of them."""

    def __init__(self, members: list[Any]) -> None:
        torch = _torch()
        first = members[0]
        self.per_token, self.qmin = first.per_token, first.qmin
        self.pre_scale, self.act_scale = first.pre_scale, first.act_scale
        self.weight_q = torch.cat([m.weight_q for m in members])
        self.out_scale = torch.cat([m.out_scale for m in members])
        self.bias = None if first.bias is None else torch.cat([m.bias for m in members])
        widths = [m.out_features for m in members]
        self.bounds = torch.tensor([0] + widths).cumsum(0)
        self.names = [m.name for m in members]
        for index, (member, lo, hi) in enumerate(zip(members, self.bounds[:-1].tolist(), self.bounds[1:].tolist(),
                                                     strict=True)):
            member.weight_q = self.weight_q[lo:hi]
            member.out_scale = self.out_scale[lo:hi]
            if self.bias is not None:
                member.bias = self.bias[lo:hi]
            member.pre_scale, member.act_scale = self.pre_scale, self.act_scale
            member.group, member.group_index = self, index
        self._local = threading.local()  # per thread: concurrent requests must not take each other's outputs

    def output(self, index: int, x: Any) -> Any:
        """Member ``index``'s output for ``x``: from the group's last GEMM if it was on this very tensor and not yet
        taken, else a new GEMM for the whole group."""
        local = self._local
        outs = getattr(local, "outs", None)
        if getattr(local, "x", None) is not x or outs is None or outs[index] is None:
            outs = w8a8(x, self, self.bounds)
            local.x, local.outs = x, outs
        out = outs[index]
        outs[index] = None
        if all(o is None for o in outs):  # everyone served: drop the input and outputs
            local.x = local.outs = None
        return out

    def __getstate__(self) -> dict[str, Any]:  # deepcopy / pickle: without the per-thread cache
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def _fusable(members: list[Any]) -> bool:
    torch = _torch()
    first = members[0]
    return all(m.in_features == first.in_features and m.per_token == first.per_token and m.qmin == first.qmin
               and torch.equal(m.pre_scale, first.pre_scale) and torch.equal(m.act_scale, first.act_scale)
               and (m.bias is None) == (first.bias is None) and m.group is None for m in members)


def fuse_shared_inputs(model: Any, int8_type: type) -> list[list[str]]:
    """Put each SHARED_INPUT_GROUPS set of ``int8_type`` linears whose quantizers match into one GEMM; returns the
    fused groups (module names)."""
    fused = []
    for parent_name, parent in model.named_modules():
        for names in SHARED_INPUT_GROUPS:
            members: list[Any] = [getattr(parent, n, None) for n in names]
            if all(isinstance(m, int8_type) for m in members) and _fusable(members):
                for member, child in zip(members, names, strict=True):
                    member.name = f"{parent_name}.{child}" if parent_name else child
                fused.append(SharedInputGroup(members).names)
    return fused
