"""Real low-precision kernels for the embedded runtime on CUDA: modelopt's fake-quantized linears become linears that
store quantized weights and run quantized GEMMs, computing what TensorRT-LLM's kernels compute with our scales.

``convert_linears_cuda(model, activations)`` replaces each calibrated ``QuantLinear`` of a restored model (on the
GPU, weights folded). The integers / FP8 codes are the fake-quant model's own: weights are first fake-quantized by
the module's own ``weight_quantizer`` and then encoded exactly (``q = w_dq / scale`` is an integer / an e4m3 code),
so only the GEMM's accumulation order differs from the fake-quant reference.

- FP8 (static per-tensor activation and weight scales): ``torch._scaled_mm`` on e4m3 operands with fp32
  accumulation; the activation is cast with modelopt's formula ``e4m3(x * 448 / amax)``, once for linears that read
  the same tensor with the same scale (q/k/v, gate/up). A decode row goes through the small-M kernel chosen at load
  (:func:`llm_quant.runtime.cuda.kernels.choose_small_m`: cast, product, scales fused) for weight shapes where it
  timed faster than cast + ``_scaled_mm`` on the card.
- INT8 weights (int8_sq W8A8, int8_wo W8A16): int8 weights with one scale per output channel. For up to 16 rows
  (decode) Triton kernels quantize the activation (per tensor or per token), read the int8 weights, multiply with
  fp32 accumulation and apply the scales (:func:`llm_quant.runtime.cuda.kernels.small_m`; which variant, for one
  row and for 2-16 rows, is timed on the card at load); the activation's integers are exact in bf16 / fp32
  (|q| <= 128), so each product is the int8 x int8 product; larger inputs (prefill) dequantize the weight into bf16
  and use cuBLAS. ``torch._int_mm`` is not used: on an H100 it measured 3-6x slower than a
  bf16 matmul (FACTS §7).
- INT4 weight blocks (int4_awq, int4_wo): ``torch._weight_int4pack_mm`` (tinygemm, bf16 activations, symmetric
  blocks encoded as q + 8 with zero 0); each layer is checked once against the dequantized product and falls back
  to dequantize + cuBLAS where it disagrees.
- anything else (w4a8_awq, nvfp4, KV-cache quantizers, disabled quantizers) keeps modelopt's fake quantization.

The report (``model.kernel_report``) says which linear runs what; runtime.json announces it per qformat
(:data:`QFORMAT_CUDA_KERNELS`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from llm_quant.runtime.cpu.int8_linear import KernelReport
from llm_quant.runtime.cuda import kernels as cuda_kernels
from quant_common.errors import QuantError, require

FP8_MAX = 448.0
QFORMAT_CUDA_KERNELS = {
    "fp8": "FP8 torch._scaled_mm (e4m3 weights, static per-tensor activation scale); decode: fused Triton "
           "small-M kernel where it times faster on the card",
    "int8_sq": "W8A8: int8 weights; decode: fused Triton small-M kernels (activation quantization, int8 products "
               "with fp32 accumulation, scales; split-K / GEMV variant timed at load); prefill: dequant + cuBLAS",
    "int8_wo": "W8A16: int8 weights widened in fused Triton small-M kernels (decode, variant timed at load) / "
               "dequant + cuBLAS (prefill)",
    "int4_awq": "W4A16 torch._weight_int4pack_mm (tinygemm), checked per layer",
    "int4_wo": "W4A16 torch._weight_int4pack_mm (tinygemm), checked per layer",
    "w4a8_awq": "fake-quant (no int4 x fp8 kernel here)",
    "nvfp4": "fake-quant",
    "full_prec": "bf16",
}


def _torch() -> Any:
    return require("torch", purpose="the CUDA runtime")


def _weight_dq(module: Any) -> Any:
    """The weight exactly as the fake-quant model uses it (the module's own weight quantizer)."""
    torch = _torch()
    with torch.no_grad():
        return module.weight_quantizer(module.weight.detach())


def _pre_scale(module: Any) -> Any:
    inq = getattr(module, "input_quantizer", None)
    pqs = getattr(inq, "pre_quant_scale", None) if inq is not None else None
    return None if pqs is None else pqs.detach().reshape(-1)


_SMALL_M_CHOICE: dict[tuple[Any, ...], Any] = {}


def _small_m_wins(weight_fp8: Any, w_scale: Any, factor: float, a_scale: float) -> Any:
    """The small-M kernel (:func:`llm_quant.runtime.cuda.kernels.choose_small_m`) for one decode row of this weight
    where it beats quantize + ``torch._scaled_mm`` on this card, else None: timed once per (device, N, K), as both
    compute the same e4m3 products with fp32 accumulation."""
    torch = _torch()
    if not weight_fp8.is_cuda:
        return None
    n, k = weight_fp8.shape
    key = (torch.cuda.get_device_name(weight_fp8.device), n, k)
    if key not in _SMALL_M_CHOICE:
        try:
            how, fused = cuda_kernels.choose_small_m_timed(weight_fp8, w_scale, act=cuda_kernels.ACT_FP8, rows=1,
                                                           act_factor=factor, act_scale=a_scale)
            x = torch.randn(1, k, device=weight_fp8.device, dtype=torch.bfloat16)
            a_scale_t = torch.tensor(a_scale, device=x.device)
            cublas = cuda_kernels.time_ms(lambda: torch._scaled_mm(
                cuda_kernels.fp8_quantize(x, None, factor), weight_fp8.t(), scale_a=a_scale_t, scale_b=w_scale,
                out_dtype=torch.bfloat16))
            _SMALL_M_CHOICE[key] = how if fused < cublas else None
        except (RuntimeError, ValueError, ImportError, QuantError):  # no Triton / no kernel for this card
            _SMALL_M_CHOICE[key] = None
    return _SMALL_M_CHOICE[key]


class _SharedInput:
    """Linears that read the same tensor with the same activation scale quantize it once (q/k/v, gate/up): the
    first caller stores ``(input, result)``, a caller with the *same tensor object* reuses the result."""

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None

    def get(self, x: Any, make: Callable[[Any], Any]) -> Any:
        if self.key is not x:
            self.key, self.value = x, make(x)
        return self.value


@functools.cache
def _classes() -> dict[str, type]:
    _torch()  # one clear line where torch is missing; the imports below then bind real types for mypy
    import torch
    from torch import nn

    class Fp8Linear(nn.Module):
        """y = scaled_mm(e4m3(x * pre * 448 / a_amax), e4m3 W) * (a_amax / 448) * (w_amax / 448) + b."""

        weight_fp8: torch.Tensor
        w_scale: torch.Tensor
        a_amax: torch.Tensor
        a_scale: torch.Tensor
        pre: Any  # [in] fp32 or None, as are bias and the optional buffers below
        bias: Any

        def __init__(self, weight_dq: Any, w_amax: Any, a_amax: Any, pre: Any, bias: Any,
                     shared: _SharedInput) -> None:
            super().__init__()
            self.out_features, self.in_features = weight_dq.shape
            w_amax = w_amax.float().reshape(())
            codes = (weight_dq.float() * (FP8_MAX / w_amax)).to(torch.float8_e4m3fn)
            self.register_buffer("weight_fp8", codes.contiguous())  # [out, in]; .t() is the column-major mat2
            self.register_buffer("w_scale", (w_amax / FP8_MAX).reshape(()))
            self.register_buffer("a_amax", a_amax.float().reshape(()))
            self.register_buffer("a_scale", (self.a_amax / FP8_MAX).reshape(()))
            self.factor = float(torch.tensor(FP8_MAX) / self.a_amax)  # fp32, as modelopt's 448 / amax
            self.a_scale_value = float(self.a_scale)
            # decode rows: the fused small-M kernel where it measured faster than _scaled_mm on this card
            self.small_m = _small_m_wins(self.weight_fp8, self.w_scale, self.factor, self.a_scale_value)
            self.register_buffer("pre", None if pre is None else pre.float())
            self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
            self.shared = shared

        def _quantize(self, x: Any) -> Any:
            if x.is_cuda:  # one fused pass (llm_quant.runtime.cuda.kernels.fp8_quantize)
                return cuda_kernels.fp8_quantize(x, self.pre, self.factor)
            v = x.float() if self.pre is None else x.float() * self.pre
            return (v * (FP8_MAX / self.a_amax)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)

        def forward(self, x: Any) -> Any:
            lead = x.shape[:-1]
            flat = x.reshape(-1, self.in_features)
            if self.small_m is not None and x.is_cuda and flat.shape[0] == 1:  # the row it was timed for
                y = cuda_kernels.small_m(self.small_m, flat, self.weight_fp8, self.w_scale, act=cuda_kernels.ACT_FP8,
                                         pre=self.pre, act_factor=self.factor, act_scale=self.a_scale_value,
                                         bias=self.bias)
                return y.reshape(*lead, self.out_features)
            q = self.shared.get(x, lambda t: self._quantize(t.reshape(-1, self.in_features)))
            y = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=self.a_scale, scale_b=self.w_scale,
                                 bias=self.bias, out_dtype=torch.bfloat16)
            return y.to(x.dtype).reshape(*lead, self.out_features)

    class Int8WeightLinear(nn.Module):
        """int8 weights x per-channel scale. ``act``: None (W8A16), "per_tensor" or "per_token" (W8A8, the
        activation replaced by its integers and its scale applied to the output)."""

        weight_q: torch.Tensor
        w_scale: torch.Tensor
        a_amax: Any
        pre: Any
        bias: Any

        def __init__(self, weight_dq: Any, w_amax: Any, act: str | None, a_amax: Any, pre: Any, bias: Any,
                     shared: _SharedInput, qmin: float = -127.0) -> None:
            super().__init__()
            self.out_features, self.in_features = weight_dq.shape
            w_amax = w_amax.float().reshape(-1, 1).expand(self.out_features, 1)
            w_scale = torch.where(w_amax <= 2**-24, torch.zeros_like(w_amax), w_amax / 127.0)
            ints = torch.where(w_scale > 0, weight_dq.float() / w_scale.clamp_min(2**-40), 0.0)
            self.register_buffer("weight_q", torch.round(ints).clamp(-128, 127).to(torch.int8).contiguous())
            self.register_buffer("w_scale", w_scale.reshape(-1).contiguous())
            self.act = act
            self.qmin = qmin  # modelopt clamps a per-tensor activation to [-128, 127] unless narrow_range
            self.register_buffer("a_amax", None if a_amax is None else a_amax.float().reshape(()))
            self.act_factor = self.act_scale = 0.0  # per-tensor: 127 / amax and amax / 127 (0 for a zero amax)
            if self.a_amax is not None and float(self.a_amax) > 2**-24:
                self.act_factor = float(127.0 / self.a_amax)
                self.act_scale = float(self.a_amax / 127.0)
            self.act_kind = {None: cuda_kernels.ACT_NONE, "per_tensor": cuda_kernels.ACT_INT8_TENSOR,
                             "per_token": cuda_kernels.ACT_INT8_TOKEN}[act]
            self.register_buffer("pre", None if pre is None else pre.float())
            self.register_buffer("bias", None if bias is None else bias.detach().float())
            self.shared = shared
            # decode: the fastest small-M kernel for one row and for a few rows, timed on this card at load
            self.one_row = self.few_rows = cuda_kernels.SmallM()
            if self.weight_q.is_cuda:
                opts: dict[str, Any] = dict(act=self.act_kind, pre=self.pre, act_factor=self.act_factor or 1.0,
                            act_scale=self.act_scale or 1.0, qmin=self.qmin)
                self.one_row = cuda_kernels.choose_small_m(self.weight_q, self.w_scale, rows=1, **opts)
                self.few_rows = cuda_kernels.choose_small_m(self.weight_q, self.w_scale, rows=8, **opts)

        def _activation(self, x: Any) -> tuple[Any, Any]:
            """(values fed to the GEMM in bf16, per-row output scale or None)."""
            if self.act is None:
                v = x if self.pre is None else (x.float() * self.pre).to(x.dtype)
                return v.to(torch.bfloat16), None
            v = x.float() if self.pre is None else x.float() * self.pre
            if self.act == "per_token":
                amax = v.abs().amax(dim=-1, keepdim=True)
            else:
                amax = self.a_amax.expand(v.shape[0], 1)
            ok = amax > 2**-24
            q = torch.where(ok, torch.round(v * (127.0 / amax.clamp_min(2**-24))).clamp(self.qmin, 127), 0.0)
            return q.to(torch.bfloat16), torch.where(ok, amax / 127.0, 0.0)

        def forward(self, x: Any) -> Any:
            lead = x.shape[:-1]
            flat = x.reshape(-1, self.in_features)
            if x.is_cuda and flat.shape[0] <= cuda_kernels.MAX_M:  # decode: the small-M kernel chosen at load
                how = self.one_row if flat.shape[0] == 1 else self.few_rows
                y = cuda_kernels.small_m(how, flat, self.weight_q, self.w_scale, act=self.act_kind, pre=self.pre,
                                         act_factor=self.act_factor, act_scale=self.act_scale, qmin=self.qmin,
                                         bias=self.bias)
                return y.reshape(*lead, self.out_features)
            values, row_scale = self.shared.get(x, lambda t: self._activation(t.reshape(-1, self.in_features)))
            y = (values @ self.weight_q.to(torch.bfloat16).t()).float()
            y = y * self.w_scale
            if row_scale is not None:
                y = y * row_scale
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype).reshape(*lead, self.out_features)

    class Int4Linear(nn.Module):
        """Symmetric INT4 blocks along the input: tinygemm (``_weight_int4pack_mm``), or dequantize + cuBLAS."""

        pre: Any
        bias: Any
        q_ref: Any
        scale_ref: Any

        def __init__(self, weight_dq: Any, block: int, pre: Any, bias: Any) -> None:
            super().__init__()
            self.out_features, self.in_features = weight_dq.shape
            self.block = block
            w = weight_dq.float().reshape(self.out_features, -1, block)
            amax = w.abs().amax(dim=-1)  # the block's largest |w_dq| is 7 scale steps (modelopt: amax / 7)
            scale = torch.where(amax > 0, amax / 7.0, torch.ones_like(amax))
            q = torch.round(w / scale.unsqueeze(-1)).clamp(-8, 7).to(torch.int32).reshape(self.out_features, -1)
            self.register_buffer("pre", None if pre is None else pre.float())
            self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))
            self.kernel = "tinygemm"
            try:
                self.packed, self.scales_zeros = cuda_kernels.int4_pack(q, scale)
                agrees = cuda_kernels.int4_agrees(self.packed, self.scales_zeros, q, scale, block)
            except (RuntimeError, NotImplementedError, ValueError) as exc:  # no tinygemm for this device/shape
                agrees, self.kernel = False, f"dequant+cuBLAS (tinygemm: {str(exc).splitlines()[0][:60]})"
            keep = not agrees  # the fallback path dequantizes from these
            if not agrees:
                self.packed = self.scales_zeros = None
                if self.kernel == "tinygemm":
                    self.kernel = "dequant+cuBLAS (tinygemm disagreed)"
            self.register_buffer("q_ref", q.to(torch.int8) if keep else None)
            self.register_buffer("scale_ref", scale.to(torch.bfloat16) if keep else None)

        def forward(self, x: Any) -> Any:
            lead = x.shape[:-1]
            v = x.reshape(-1, self.in_features)
            v = (v.float() * self.pre if self.pre is not None else v).to(torch.bfloat16).contiguous()
            if self.packed is not None:
                y = torch._weight_int4pack_mm(v, self.packed, self.block, self.scales_zeros)
            else:
                w = (self.q_ref.reshape(self.out_features, -1, self.block).to(torch.bfloat16)
                     * self.scale_ref.unsqueeze(-1)).reshape(self.out_features, self.in_features)
                y = v @ w.t()
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype).reshape(*lead, self.out_features)

    return {"Fp8Linear": Fp8Linear, "Int8WeightLinear": Int8WeightLinear, "Int4Linear": Int4Linear}


def _is_fp8(quantizer: Any) -> bool:
    return quantizer is not None and quantizer.is_enabled and getattr(quantizer, "num_bits", None) == (4, 3)


def _plan(module: Any, activations: str) -> str:
    """Which kernel a quantized linear gets (``fake`` keeps modelopt's module)."""
    wq: Any = getattr(module, "weight_quantizer", None)
    inq: Any = getattr(module, "input_quantizer", None)
    if wq is None or not wq.is_enabled or (getattr(module, "output_quantizer", None) is not None
                                           and module.output_quantizer.is_enabled):
        return "fake"
    in_on = inq is not None and inq.is_enabled
    if not hasattr(wq, "num_bits"):  # a SequentialQuantizer (W4A8 AWQ: INT4 blocks, then FP8): no real kernel here
        return "fake"
    if _is_fp8(wq) and not wq.block_sizes and wq.amax is not None and wq.amax.numel() == 1:
        return "fp8" if in_on and _is_fp8(inq) and inq.amax is not None and inq.amax.numel() == 1 else "fake"
    if wq.num_bits == 8 and not wq.block_sizes and wq.amax is not None:
        if not in_on:
            return "int8_w8a16"
        if inq.num_bits == 8 and not inq.block_sizes and (activations == "per_token" or
                                                          (inq.amax is not None and inq.amax.numel() == 1)):
            return f"int8_w8a8_{activations}"
        return "fake"
    if wq.num_bits == 4 and wq.block_sizes and not in_on:
        return "int4"
    return "fake"


def _block_size(quantizer: Any) -> int:
    sizes = quantizer.block_sizes or {}
    size = sizes.get(-1, sizes.get("-1"))
    if not isinstance(size, int):
        raise QuantError("an INT4 weight quantizer has no block size along the input", "rebuild with llm-quant build")
    return size


def convert_linears_cuda(model: Any, activations: str = "per_tensor") -> KernelReport:
    """Swap the quantized linears of a restored model on CUDA for real-kernel modules, in place."""
    torch = _torch()
    classes = _classes()
    report = KernelReport()
    shared: dict[Any, _SharedInput] = {}
    targets = [(n, m) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and hasattr(m, "weight_quantizer")]
    for name, module in targets:
        plan = _plan(module, activations)
        parent_name, _, child = name.rpartition(".")
        inq: Any = getattr(module, "input_quantizer", None)
        pre = _pre_scale(module)
        # one quantization of a shared input per (parent module, scale, pre-scale): q/k/v, gate/up
        key = (parent_name, plan, None if inq is None or inq.amax is None else float(inq.amax.float().max()),
               None if pre is None else pre.data_ptr())
        share = shared.setdefault(key, _SharedInput())
        layer: Any = None
        kind = "fake-quant"
        with torch.no_grad():
            if plan == "fp8":
                layer = classes["Fp8Linear"](_weight_dq(module), module.weight_quantizer.amax, inq.amax, pre,
                                             module.bias, share)
                kind = "FP8 _scaled_mm" + (f" (decode, 1 row: {layer.small_m.label})" if layer.small_m else "")
            elif plan.startswith("int8"):
                act = None if plan == "int8_w8a16" else activations
                a_amax = inq.amax if act == "per_tensor" else None
                qmin = -128.0 if act == "per_tensor" and not inq.narrow_range else -127.0
                layer = classes["Int8WeightLinear"](_weight_dq(module), module.weight_quantizer.amax, act, a_amax,
                                                    pre, module.bias, share, qmin)
                kind = ("INT8 W8A16" if act is None else f"INT8 W8A8 {act}") + \
                    f" (decode: 1 row {layer.one_row.label}, 2-16 rows {layer.few_rows.label})"
            elif plan == "int4":
                layer = classes["Int4Linear"](_weight_dq(module), _block_size(module.weight_quantizer), pre,
                                              module.bias)
                kind = f"INT4 W4A16 {layer.kernel}"
        if layer is not None:
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer)
            module._parameters["weight"] = None
        report.kernels[name] = kind
    torch.cuda.empty_cache()
    return report
