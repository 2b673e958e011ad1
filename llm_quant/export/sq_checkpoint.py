"""The per-token SmoothQuant TensorRT-LLM checkpoint (``W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN``): write and verify.

modelopt exports int8_sq only as the static per-tensor ``W8A8_SQ_PER_CHANNEL`` (``Int8SmoothQuantLinear``:
``weights_scaling_factor``, ``activation_scaling_factor``, ``prequant_scaling_factor`` per linear).
:func:`to_per_token` rewrites that export, rank by rank, into what TensorRT-LLM's SmoothQuant plugin layers load
(the fact table ``llm_quant/upstream/trtllm_smoothquant.yaml``):

- every linear keeps its int8 weight (already smoothed: modelopt folded ``1 / pre_quant_scale`` into it) and gets
  ``per_channel_scale`` (1, out) = modelopt's ``weights_scaling_factor``;
- q/k/v and fc/gate (which read a norm's output) get no smoother: their shared ``pre_quant_scale`` is multiplied
  into ``input_layernorm.weight`` / ``post_layernorm.weight``, and each norm gets ``scale_to_int`` = 1;
- ``attention.dense`` and ``mlp.proj`` get ``smoother`` (1, in) = ``1 / pre_quant_scale`` (TensorRT-LLM divides);
- activation scales are dropped: per-token scales are computed at run time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_quant.upstream.smoothquant import facts, quant_algo
from quant_common.atomic import atomic_write_json
from quant_common.errors import QuantError, require

# column linears whose SmoothQuant scale TensorRT-LLM folds into the norm before them
NORM_OF = {"attention.qkv": "input_layernorm", "mlp.fc": "post_layernorm", "mlp.gate": "post_layernorm"}
ROW_LINEARS = ("attention.dense", "mlp.proj")
MODELOPT_SCALES = ("weights_scaling_factor", "activation_scaling_factor", "prequant_scaling_factor")


def _layer_ids(weights: dict[str, Any]) -> list[int]:
    return sorted({int(k.split(".")[2]) for k in weights if k.startswith("transformer.layers.")})


def _convert_rank(weights: dict[str, Any], dtype: Any) -> dict[str, Any]:
    torch = require("torch", purpose="the per-token checkpoint")
    out = dict(weights)
    for layer in _layer_ids(weights):
        prefix = f"transformer.layers.{layer}."
        folded: dict[str, Any] = {}
        for linear in (*NORM_OF, *ROW_LINEARS):
            name = prefix + linear
            if f"{name}.weight" not in weights or f"{name}.prequant_scaling_factor" not in weights:
                continue
            pqs = out.pop(f"{name}.prequant_scaling_factor").float().reshape(-1)
            out[f"{name}.per_channel_scale"] = out.pop(f"{name}.weights_scaling_factor").float().reshape(1, -1)
            out.pop(f"{name}.activation_scaling_factor", None)
            if linear in ROW_LINEARS:
                out[f"{name}.smoother"] = (1.0 / pqs).reshape(1, -1).contiguous()
                continue
            norm = prefix + NORM_OF[linear]
            if norm in folded:
                if not torch.equal(folded[norm], pqs):
                    raise QuantError(f"{name} and the other linears after {norm} have different SmoothQuant scales",
                                     "calibrate with llm-quant (it shares one scale per input group)")
                continue
            folded[norm] = pqs
            out[f"{norm}.weight"] = (weights[f"{norm}.weight"].float() * pqs).to(dtype)
            out[f"{norm}.scale_to_int"] = torch.ones(1, dtype=dtype)
    return out


def to_per_token(folder: Path) -> list[str]:
    """Rewrite modelopt's ``W8A8_SQ_PER_CHANNEL`` export in ``folder`` (in place; the caller stages it) into
    ``W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN``. Returns a description of the change for build.json."""
    torch = require("torch", purpose="the per-token checkpoint")
    safetensors_torch = require("safetensors.torch", purpose="the per-token checkpoint")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    quant = config.get("quantization", {})
    if quant.get("quant_algo") != "W8A8_SQ_PER_CHANNEL":
        raise QuantError(f"the per-token checkpoint is made from modelopt's W8A8_SQ_PER_CHANNEL export, got "
                         f"{quant.get('quant_algo')!r}", "this modelopt version exports int8_sq differently; report it")
    excluded = [p for p in quant.get("exclude_modules") or [] if "layers." in p]
    if excluded:
        raise QuantError(f"per-token SmoothQuant cannot keep layers {excluded[:3]} in higher precision in a "
                         "TensorRT-LLM checkpoint (its SmoothQuant plugin path ignores exclude_modules)",
                         "use --sq-activations per_tensor with --accuracy-budget")
    dtype = getattr(torch, str(config.get("dtype", "float16")))
    for rank in sorted(folder.glob("rank*.safetensors")):
        weights = dict(safetensors_torch.load_file(str(rank)))
        safetensors_torch.save_file(_convert_rank(weights, dtype), str(rank))
    old = quant["quant_algo"]
    quant["quant_algo"] = quant_algo()
    atomic_write_json(config_path, config)
    return [f"quant_algo {old} -> {quant['quant_algo']} (per-token activations; SmoothQuant scales folded into "
            "input_layernorm/post_layernorm for qkv and fc/gate, smoother for dense and proj)"]


def _expected_shape(shape: list[str | int], weight: Any, hidden: int) -> tuple[int, ...]:
    out, inp = (int(weight.shape[0]), int(weight.shape[1])) if weight is not None else (0, 0)
    sizes = {"out": out, "in": inp, "hidden": hidden}
    return tuple(sizes[s] if isinstance(s, str) else int(s) for s in shape)


def verify_per_token(weights: dict[str, Any], config: dict[str, Any], fail: Any) -> int:
    """Check every decoder layer of one rank against the fact table; returns the quantized linear count.
    ``fail(problem)`` builds the error to raise."""
    table = facts()
    dtype = str(config.get("dtype", "float16"))
    hidden = int(config["hidden_size"])
    forbidden = {f.name for f in table.static_only} | set(MODELOPT_SCALES)
    linears = 0
    for layer in _layer_ids(weights):
        prefix = f"transformer.layers.{layer}."
        for fact in table.tensors:
            key = f"{prefix}{fact.module}.{fact.name}"
            if key not in weights:
                raise fail(f"{key} is missing ({table.quant_algo.name} needs it: {fact.source.cite()})")
            tensor = weights[key]
            got_dtype = str(tensor.dtype).removeprefix("torch.")
            want_dtype = dtype if fact.dtype == "model" else fact.dtype
            if got_dtype != want_dtype:
                raise fail(f"{key} is {got_dtype}, {table.quant_algo.name} needs {want_dtype}")
            owner = weights.get(f"{prefix}{fact.module}.weight")
            want = _expected_shape(fact.shape, owner if owner is not None and owner.dim() == 2 else None, hidden)
            if tuple(tensor.shape) != want:
                raise fail(f"{key} has shape {tuple(tensor.shape)}, expected {want}")
            if fact.value is not None and float(tensor.float().reshape(-1)[0]) != fact.value:
                raise fail(f"{key} is {float(tensor.float().reshape(-1)[0])}, expected {fact.value}")
            linears += fact.name == "weight" and fact.dtype == "int8"
        extra = [k for k in weights if k.startswith(prefix) and k.rsplit(".", 1)[-1] in forbidden]
        if extra:
            raise fail(f"{extra[0]} belongs to a static-scale SmoothQuant checkpoint, not {table.quant_algo.name}")
    return linears
