"""Per-token SmoothQuant activations (``--sq-activations per_token``): the math, and the switch on a modelopt model.

modelopt cannot calibrate SmoothQuant with per-token activation quantizers (it asserts "Axis and block_sizes are
both set"), so the model is calibrated with modelopt's per-tensor SmoothQuant and each enabled W8A8 input quantizer
is then switched to dynamic per-token quantization here. The weights stay modelopt's per-channel int8.

The per-token math (TensorRT-LLM's ``quantize_per_token``; ``llm_quant.runtime.cpu.int8_linear`` computes the same
in int8):

    v = x.float() * pre_quant_scale                       # SmoothQuant pre-scale, float32, separate multiply
    amax = v.abs().amax(dim=-1, keepdim=True)             # one amax per token row
    scale = 127 / amax, 0 where amax <= 2**-24
    q = round_half_even(v * scale).clamp(-127, 127)
    fake-quant output = q / scale (0 where scale == 0)

The switch replaces the quantizer's ``forward`` on the instance only: modelopt's saved state (amax, pre_quant_scale)
is unchanged, so the embedded runtime restores the per-tensor model and applies this switch again from
``runtime.json``'s ``sq_activations``.
"""

from __future__ import annotations

import types
from typing import Any

from quant_common.errors import require

SQ_ACTIVATIONS = ("per_tensor", "per_token")
AMAX_EPS = 2.0 ** -24
QMAX = 127.0


def fake_quant_per_token(x: Any, pre_quant_scale: Any | None) -> Any:
    """``x`` after the SmoothQuant pre-scale and per-token int8 fake quantization (float32)."""
    torch = require("torch", purpose="per-token quantization")
    v = x.float()
    if pre_quant_scale is not None:
        v = v * pre_quant_scale.float()
    amax = v.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > AMAX_EPS, QMAX / amax.clamp_min(AMAX_EPS), torch.zeros_like(amax))
    q = torch.round(v * scale).clamp(-QMAX, QMAX)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.where(scale > 0, q / safe, torch.zeros_like(q))


def _per_token_forward(self: Any, inputs: Any) -> Any:
    return fake_quant_per_token(inputs, self.pre_quant_scale).to(inputs.dtype)  # modelopt's property: None if off


def w8a8_input_quantizers(model: Any) -> list[tuple[str, Any]]:
    """(linear name, input quantizer) of every enabled 8-bit weight+activation quantized linear."""
    found = []
    for name, module in model.named_modules():
        inq, wq = getattr(module, "input_quantizer", None), getattr(module, "weight_quantizer", None)
        if inq is None or wq is None or not getattr(inq, "is_enabled", False) or not getattr(wq, "is_enabled", False):
            continue
        if getattr(inq, "num_bits", None) == 8 and getattr(wq, "num_bits", None) == 8:
            found.append((name, inq))
    return found


def use_per_token_activations(model: Any) -> int:
    """Switch every enabled W8A8 input quantizer of ``model`` to dynamic per-token (fake) quantization, in place.
    Returns how many were switched; calling it twice changes nothing more."""
    switched = 0
    for _, quantizer in w8a8_input_quantizers(model):
        if not is_per_token(quantizer):
            # an instance attribute only: modelopt's saved state skips "forward", so nothing of this is persisted
            quantizer.forward = types.MethodType(_per_token_forward, quantizer)
        switched += 1
    return switched


def is_per_token(quantizer: Any) -> bool:
    return getattr(quantizer.__dict__.get("forward"), "__func__", None) is _per_token_forward
