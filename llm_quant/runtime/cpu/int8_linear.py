"""Real integer kernels for the embedded runtime: modelopt's fake-quantized linears become int8 linears.

``convert_linears(model)`` replaces each calibrated ``QuantLinear`` of a restored (not yet weight-folded) model:

- W8A8 (int8_sq): :class:`Int8Linear` computes what TensorRT-LLM's SmoothQuant GEMM computes. The activation is
  multiplied by the SmoothQuant pre-scale and quantized with its static per-tensor scale (``127 / amax``, round half
  to even, clamped as modelopt clamps: [-127, 127] when ``narrow_range``), the weights are stored as int8 with one
  scale per output channel, ``torch._int_mm`` accumulates in int32, and the result is dequantized by
  activation scale x channel scale. The integers are the fake-quant model's integers; only the float
  accumulation order of the fake-quant matmul differs. ``activations="per_token"`` quantizes each token row with
  its own dynamic scale instead (see :func:`convert_linears`). Activations are quantized in one compiled pass
  and dequantized in one (``llm_quant.runtime.cpu.int8_kernels``); q/k/v and gate/up run as one GEMM each where
  they share their quantizer (``llm_quant.runtime.cpu.int8_fused``), with the same integers and outputs as unfused.
- int8 weight-only (int8_wo): :class:`Int8WeightOnlyLinear` on ``torch._weight_int8pack_mm`` (int8 weights,
  per-channel scales, float activations), only with ``weight_only=True``: on torch 2.13 CPU it measured slower
  than the FP32 GEMV it replaces (M=1, K=576, N=1536, one thread: 0.7-1.0 ms vs 0.1-0.35 ms), so by default
  int8_wo keeps the folded fake-quant weights (FP32 speed, same numbers).
- anything else (int4/AWQ blocks, fp8, disabled quantizers) stays on the fake-quant path; the report says so.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_quant.runtime.cpu import int8_fused, int8_kernels
from quant_common.errors import QuantError, require

if TYPE_CHECKING:
    import torch
    from torch import nn

KERNELS = ("int8", "fake")
# How W8A8 linears quantize activations (runtime.json's "sq_activations"; absent = per_tensor).
ACTIVATIONS = ("per_tensor", "per_token")
# What a build's runtime.json announces for each qformat under kernels="int8".
QFORMAT_KERNELS = {
    "int8_sq": "W8A8 torch._int_mm (int8 x int8 -> int32, static per-tensor activation scale)",
    "int8_sq:per_token": "W8A8 torch._int_mm (int8 x int8 -> int32, dynamic per-token activation scale)",
    "int8_wo": "fake-quant (torch._weight_int8pack_mm measured slower than FP32 on CPU)",
    "int4_wo": "fake-quant (no CPU kernel for modelopt's symmetric int4 blocks)",
    "int4_awq": "fake-quant (no CPU kernel for modelopt's symmetric int4 blocks)",
    "w4a8_awq": "fake-quant (no CPU kernel for int4 x fp8)",
    "fp8": "fake-quant (fp8 stays as is on CPU)",
}
_AMAX_EPS = float(int8_kernels.AMAX_EPS)  # modelopt treats amax at or below this as zero (quantizes to 0)


@dataclass
class KernelReport:
    """Which kernel each linear got, for runtime logs and the benchmark."""

    kernels: dict[str, str] = field(default_factory=dict)
    fused: list[list[str]] = field(default_factory=list)  # linears sharing one GEMM (int8_fused)

    def summary(self) -> str:
        counts = Counter(self.kernels.values())
        text = ", ".join(f"{n} x {kind}" for kind, n in sorted(counts.items())) or "no quantized linears"
        if self.fused:
            shapes = Counter("+".join(n.rsplit(".", 1)[-1] for n in names) for names in self.fused)
            text += "; fused GEMMs: " + ", ".join(f"{n} x {key}" for key, n in sorted(shapes.items()))
        return text


def _int8_scale(amax: torch.Tensor) -> torch.Tensor:
    """modelopt's ``scale = max_bound / amax`` in float32, zero where amax is (near) zero."""
    torch = _torch()
    amax = amax.float()
    scale = torch.tensor(127.0) / amax
    return torch.where(amax <= _AMAX_EPS, torch.zeros_like(scale), scale)


def _dequant_scale(amax: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_int8_scale` (``amax / 127``), zero where the quantized values are all zero."""
    torch = _torch()
    amax = amax.float()
    return torch.where(amax <= _AMAX_EPS, torch.zeros_like(amax), amax / 127.0)


def _quantize(values: torch.Tensor, scale: torch.Tensor, qmin: float) -> torch.Tensor:
    torch = _torch()
    return torch.round(values.float() * scale).clamp_(qmin, 127.0).to(torch.int8)


def _torch() -> Any:
    return require("torch", purpose="the int8 runtime")


@functools.cache
def _classes() -> dict[str, type]:
    """The int8 modules, defined on first use: torch is imported then, not when the package is (``llm-quant
    --help`` took ~3 s importing torch through this module)."""
    _torch()  # one clear line where torch is missing; the imports below then bind real types for mypy
    import torch
    from torch import nn

    class Int8Linear(nn.Module):
        """y = (q(x * pre_scale) @ q(W).T) * (act_amax / 127) * (w_amax / 127) + b, with int32 accumulation.

        ``per_token``: act_amax is each token row's own max |x * pre_scale| (dynamic), not the calibrated one."""

        weight_q: torch.Tensor
        out_scale: torch.Tensor
        act_scale: torch.Tensor
        pre_scale: torch.Tensor
        bias: torch.Tensor | None

        def __init__(self, weight_q: torch.Tensor, out_scale: torch.Tensor, act_scale: torch.Tensor,
                     pre_scale: torch.Tensor | None, bias: torch.Tensor | None, qmin: float,
                     per_token: bool = False) -> None:
            super().__init__()
            self.out_features, self.in_features = weight_q.shape
            self.register_buffer("weight_q", weight_q.contiguous())
            self.register_buffer("out_scale", out_scale.float().contiguous())
            self.register_buffer("act_scale", act_scale.float().reshape(()))
            # no pre-scale = a pre-scale of ones (x * 1.0 is exact), so one kernel serves both
            self.smooth = pre_scale is not None
            pre = torch.ones(self.in_features) if pre_scale is None else pre_scale.float().reshape(-1)
            self.register_buffer("pre_scale", pre.contiguous())
            self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
            self.qmin = qmin
            self.per_token = per_token
            self.group: Any = None  # an int8_fused.SharedInputGroup computing this linear with its siblings
            self.group_index = 0
            self.bounds = torch.tensor([0, self.out_features])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lead = x.shape[:-1]
            if self.group is not None:
                y = self.group.output(self.group_index, x)
            else:  # per token: an all-zero row (amax 0) gives the bias alone
                y = int8_fused.w8a8(x, self, self.bounds)[0]
            return y.to(x.dtype).reshape(*lead, self.out_features)

        def extra_repr(self) -> str:
            return (f"in={self.in_features}, out={self.out_features}, smooth={self.smooth}, "
                    f"activations={'per_token' if self.per_token else 'per_tensor'}"
                    + ("" if self.group is None else f", fused={'+'.join(self.group.names)}"))


    class Int8WeightOnlyLinear(nn.Module):
        """y = x @ (q(W) * w_amax / 127).T + b through ``torch._weight_int8pack_mm``."""

        weight_q: torch.Tensor
        channel_scale: torch.Tensor
        bias: torch.Tensor | None

        def __init__(self, weight_q: torch.Tensor, channel_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
            super().__init__()
            self.out_features, self.in_features = weight_q.shape
            self.register_buffer("weight_q", weight_q.contiguous())
            self.register_buffer("channel_scale", channel_scale.float().contiguous())
            self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lead = x.shape[:-1]
            flat = x.reshape(-1, self.in_features).float().contiguous()
            y = torch._weight_int8pack_mm(flat, self.weight_q, self.channel_scale)
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype).reshape(*lead, self.out_features)

    return {"Int8Linear": Int8Linear, "Int8WeightOnlyLinear": Int8WeightOnlyLinear}


def __getattr__(name: str) -> Any:
    if name in ("Int8Linear", "Int8WeightOnlyLinear"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _plain_int8(quantizer: Any, needs_amax: bool = True) -> bool:
    """An enabled, static, 8-bit integer quantizer without blocks or rotation."""
    return (quantizer is not None and quantizer.is_enabled and quantizer.num_bits == 8
            and not quantizer.block_sizes and not getattr(quantizer, "rotate_is_enabled", False)
            and not quantizer.unsigned and (quantizer.amax is not None or not needs_amax))


def _checked_weight_amax(name: str, module: Any) -> torch.Tensor:
    torch = _torch()
    amax = module.weight_quantizer.amax.float()
    rows = module.weight.shape[0]
    if amax.numel() not in (1, rows):
        raise QuantError(f"{name}: weight amax has {amax.numel()} values for {rows} output channels",
                         "the state does not fit this base model; rebuild with llm-quant build")
    if torch.isnan(amax).any() or (amax < 0).any():
        raise QuantError(f"{name}: weight amax holds NaN or negative values", "rebuild with llm-quant build")
    return amax.reshape(-1).expand(rows).reshape(rows, 1)


def _weight_ints(module: Any, amax: torch.Tensor) -> torch.Tensor:
    qmin = -127.0 if module.weight_quantizer.narrow_range else -128.0
    return _quantize(module.weight.detach(), _int8_scale(amax), qmin)


def _to_w8a8(name: str, module: Any, per_token: bool) -> nn.Module:
    torch = _torch()
    inq = module.input_quantizer
    # per_token: the calibrated amax, if any, plays no part (a placeholder of 127 keeps one code path)
    act_amax = torch.full((), 127.0) if per_token else inq.amax.float()
    if act_amax.numel() != 1 or torch.isnan(act_amax).any() or (act_amax < 0).any():
        raise QuantError(f"{name}: activation amax must be one non-negative value, got shape "
                         f"{tuple(act_amax.shape)}", "the state does not fit this model; rebuild with llm-quant build")
    pre = inq.pre_quant_scale
    if pre is not None and pre.numel() != module.weight.shape[1]:
        raise QuantError(f"{name}: SmoothQuant pre-scale has {pre.numel()} values for {module.weight.shape[1]} "
                         "input channels", "the state does not fit this base model; rebuild with llm-quant build")
    w_amax = _checked_weight_amax(name, module)
    w_scale = _dequant_scale(w_amax).reshape(-1)
    out_scale = w_scale if per_token else _dequant_scale(act_amax).reshape(()) * w_scale
    return _classes()["Int8Linear"](_weight_ints(module, w_amax), out_scale, _int8_scale(act_amax), pre, module.bias,
                      -127.0 if (inq.narrow_range or per_token) else -128.0, per_token=per_token)


def _to_w8(name: str, module: Any) -> nn.Module:
    w_amax = _checked_weight_amax(name, module)
    return _classes()["Int8WeightOnlyLinear"](_weight_ints(module, w_amax), _dequant_scale(w_amax).reshape(-1), module.bias)


def _kernel_for(module: Any, weight_only: bool, per_token: bool) -> str:
    wq: Any = getattr(module, "weight_quantizer", None)
    inq: Any = getattr(module, "input_quantizer", None)
    if getattr(module, "output_quantizer", None) is not None and module.output_quantizer.is_enabled:
        return "fake-quant (output quantizer)"
    if not _plain_int8(wq) or (wq.axis not in (0, (0,), None)):
        return "fake-quant"
    if _plain_int8(inq, needs_amax=not per_token) and inq.axis is None:
        return "int8 W8A8 _int_mm per-token" if per_token else "int8 W8A8 _int_mm"
    if inq is None or not inq.is_enabled:
        return "int8 W8 _weight_int8pack_mm" if weight_only else "fake-quant (weight-only: packed kernel slower)"
    return "fake-quant"


def _probe(kind: str, layer: Any) -> str:
    """Run the kernel once for one token and a few; a CPU build without it keeps the fake-quant path."""
    torch = _torch()
    try:
        with torch.no_grad():
            for rows in (1, 17):
                layer(torch.zeros(rows, layer.in_features))
    except (RuntimeError, NotImplementedError) as exc:
        return f"fake-quant ({kind} unavailable: {str(exc).splitlines()[0][:80]})"
    return kind


def convert_linears(model: nn.Module, weight_only: bool = False, activations: str = "per_tensor",
                    prepare: Callable[[str, nn.Module], None] | None = None, fuse: bool = True) -> KernelReport:
    """Swap the model's quantized linears for integer kernels in place; returns which linear runs what.

    ``weight_only`` also moves int8 weight-only linears to the packed kernel (smaller, slower on CPU today).
    ``activations``: how each W8A8 linear quantizes its input. ``"per_tensor"``: the calibrated static amax
    (TensorRT-LLM's per-tensor SmoothQuant GEMM). ``"per_token"``: each token row dynamically,
    ``v = x.float() * pre_quant_scale``; ``amax = max |v|`` over the row; ``q = clamp(rint(v * 127 / amax),
    -127, 127)`` (q = 0 where amax <= 2**-24); ``y = (q @ Wq.T) * (amax / 127) * (w_amax / 127) + bias``; the
    calibrated input amax is ignored.
    ``prepare(name, module)`` runs just before each quantized linear is converted (the runtime folds that one
    weight there, so only one layer's FP32 copy exists at a time).
    ``fuse``: q/k/v and gate/up whose quantizers match run as one GEMM each (``llm_quant.runtime.cpu.int8_fused``;
    same outputs bit for bit, fewer passes)."""
    torch = _torch()
    if activations not in ACTIVATIONS:
        raise QuantError(f"unknown activation quantization {activations!r}", f"use one of {', '.join(ACTIVATIONS)}")
    per_token = activations == "per_token"
    report = KernelReport()
    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and hasattr(module, "weight_quantizer")]
    for name, module in targets:
        if prepare is not None:
            prepare(name, module)
        kind = _kernel_for(module, weight_only, per_token)
        layer: nn.Module | None = None
        if kind.startswith("int8 W8A8"):
            layer = _to_w8a8(name, module, per_token)
        elif kind == "int8 W8 _weight_int8pack_mm":
            layer = _to_w8(name, module)
        if layer is not None:
            kind = _probe(kind, layer)
            if kind.startswith("fake-quant"):
                layer = None
        if layer is not None:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.to(module.weight.device))
            # The replaced module can outlive the swap (measured: 150 of 210 stayed reachable after loading,
            # holder not found): drop its weight so only the int8 copy stays.
            module._parameters["weight"] = None
        report.kernels[name] = kind
    if fuse:
        report.fused = int8_fused.fuse_shared_inputs(model, _classes()["Int8Linear"])
    return report


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the weights (and scales) of the model's linear layers, quantized or not."""
    torch = _torch()
    total = 0
    for module in model.modules():
        if isinstance(module, tuple(_classes().values())):
            total += sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
        elif isinstance(module, torch.nn.Linear):
            total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return total
