"""Which parts of a decoder stay in higher precision, named for every consumer.

An exclusion is an HF module name: a whole decoder layer (``model.layers.3``) or one linear
(``model.layers.3.mlp.down_proj``). The accuracy-budget search chooses *precision units*: the linears TensorRT-LLM
runs as one GEMM share one precision (q/k/v -> ``attention.qkv``; gate/up -> ``mlp.fc`` + ``mlp.gate``), so a unit
is one of qkv, o_proj, gate+up, down_proj of one layer. From the same names come the modelopt config entries
(calibration), the TensorRT-LLM ``exclude_modules`` patterns, the HF ``ignore`` list and the weight share kept
quantized. The HF -> TensorRT-LLM names are facts read from TensorRT-LLM's Llama conversion
(``llm_quant/upstream/modelopt_export.yaml``).
"""

from __future__ import annotations

import re
from typing import Any

from llm_quant.upstream import modelopt_export_facts
from quant_common.errors import require

LAYER_RE = re.compile(r"^(?:.*\.)?layers\.(\d+)$")
LINEAR_RE = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(.+)$")


def decoder_layers(model: Any) -> list[str]:
    """Module names of the decoder layers (``model.layers.N``), in order."""
    torch = require("torch", purpose="layer search")
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, torch.nn.ModuleList):
            return [f"{name}.{i}" for i in range(len(module))]
    return []


def decoder_linears(model: Any) -> dict[str, Any]:
    """HF module name -> ``nn.Linear`` (modelopt's quantized subclass included) for every decoder-layer linear."""
    torch = require("torch", purpose="layer search")
    prefixes = tuple(f"{layer}." for layer in decoder_layers(model))
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(prefixes)}


def _names() -> dict[str, tuple[str, str]]:
    return {row.hf: (row.trtllm, row.group) for row in modelopt_export_facts().trtllm_linear_names}


def precision_units(model: Any) -> dict[str, list[str]]:
    """Unit name (``model.layers.3.gate_up``) -> the HF linears it covers, in layer order.

    Linears the fact table does not name are units of their own (precision chosen per linear)."""
    names = _names()
    units: dict[str, list[str]] = {}
    for linear in decoder_linears(model):
        match = LINEAR_RE.match(linear)
        assert match is not None
        layer = linear[: len(linear) - len(match.group(2)) - 1]
        group = names.get(match.group(2), (None, match.group(2)))[1]
        units.setdefault(f"{layer}.{group}", []).append(linear)
    return units


def modelopt_pattern(module: str) -> str:
    """modelopt wildcard covering every quantizer of one module subtree (``*model.layers.3.*``: not layer 30)."""
    return f"*{module}.*"


def trtllm_pattern(module: str) -> str | None:
    """TensorRT-LLM ``exclude_modules`` entry for an HF layer or linear (None: no TensorRT-LLM name known).

    TensorRT-LLM matches each pattern with fnmatchcase against full module names (``transformer.layers.3.mlp.proj``).
    """
    facts = modelopt_export_facts()
    prefix = facts.exclude_modules_matching.module_prefix
    match = LAYER_RE.match(module)
    if match:
        return f"{prefix}{match.group(1)}.*"
    match = LINEAR_RE.match(module)
    if match and match.group(2) in _names():
        return f"{prefix}{match.group(1)}.{_names()[match.group(2)][0]}"
    return None


def trtllm_patterns(modules: list[str]) -> list[str]:
    out: list[str] = []
    for module in modules:
        pattern = trtllm_pattern(module)
        if pattern is not None and pattern not in out:
            out.append(pattern)
    return out


def hf_pattern(module: str) -> str:
    """HF ``quantization_config.ignore`` entry: a layer's subtree, or the linear's own name (as modelopt writes it)."""
    return f"{module}.*" if LAYER_RE.match(module) else module


def exclusions_ignored_by(quant_algo: str | None) -> bool:
    """True where TensorRT-LLM builds the engine without reading exclude_modules (SmoothQuant plugin algos)."""
    return quant_algo in modelopt_export_facts().exclude_modules_matching.ignored_by_quant_algos


def quantized_weight_share(model: Any) -> float:
    """Fraction of decoder-linear parameters whose weights are quantized (lm_head and embeddings not counted)."""
    total = kept = 0
    for module in decoder_linears(model).values():
        count = module.weight.numel()
        total += count
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None and getattr(quantizer, "is_enabled", False):
            kept += count
    return kept / total if total else 0.0
