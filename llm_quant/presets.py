"""Presets (configs/llm/*.yaml) and the qformat table: qformat -> modelopt config, exported quant_algo.

Formats are data (STYLE: Model-Optimizer): one row per qformat, one YAML per model family.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_quant.config import Preset
from quant_common.errors import QuantError, require

# configs/llm is the one source of truth; llm_quant/presets_yaml links to it so an installed wheel carries it too.
PRESET_DIR = Path(__file__).resolve().parent / "presets_yaml"


@dataclass(frozen=True)
class QFormatSpec:
    modelopt_cfg: str | None  # attribute of modelopt.torch.quantization; None = full precision
    quant_algo: str | None  # TensorRT-LLM checkpoint quantization.quant_algo
    needs_cuda: bool = False
    weight_dtype: str | None = None  # safetensors dtype of quantized linear weights


# quant_algo values are TensorRT-LLM's QuantAlgo names as modelopt exports them.
QFORMATS: dict[str, QFormatSpec] = {
    "int8_sq": QFormatSpec("INT8_SMOOTHQUANT_CFG", "W8A8_SQ_PER_CHANNEL", weight_dtype="int8"),
    "fp8": QFormatSpec("FP8_DEFAULT_CFG", "FP8", weight_dtype="float8_e4m3fn"),
    "int4_awq": QFormatSpec("INT4_AWQ_CFG", "W4A16_AWQ", weight_dtype="int8"),
    "w4a8_awq": QFormatSpec("W4A8_AWQ_BETA_CFG", "W4A8_AWQ", weight_dtype="int8"),
    "int8_wo": QFormatSpec("INT8_WEIGHT_ONLY_CFG", "W8A16", weight_dtype="int8"),
    # modelopt exports INT4 weight-only as W4A16_AWQ without pre-quant scales (export.py corrects the flag)
    "int4_wo": QFormatSpec("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "W4A16_AWQ", weight_dtype="int8"),
    "nvfp4": QFormatSpec("NVFP4_DEFAULT_CFG", "NVFP4", needs_cuda=True),
    "full_prec": QFormatSpec(None, None),
}
KV_CACHE_ALGOS = {"fp8": "FP8", "int8": "INT8"}


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> Preset:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise QuantError(f"unknown preset {name!r}", f"choose one of {', '.join(available_presets())}, "
                         "or pass a model folder / hub id")
    try:
        data = yaml.safe_load(path.read_text())
        return Preset.model_validate(data)
    except Exception as exc:  # yaml or pydantic: keep one line
        first = " ".join(str(exc).split())[:300]
        raise QuantError(f"preset {path} is invalid: {first}", "fix the YAML") from exc


def is_preset(name: str) -> bool:
    return (PRESET_DIR / f"{name}.yaml").is_file()


def qformat_spec(qformat: str) -> QFormatSpec:
    if qformat not in QFORMATS:
        raise QuantError(f"unknown qformat {qformat!r}", f"choose one of {', '.join(QFORMATS)}")
    return QFORMATS[qformat]


def layer_pattern(layer: str) -> str:
    """modelopt wildcard covering every quantizer of one module subtree (e.g. 'model.layers.3')."""
    return f"*{layer}.*"


def modelopt_config(qformat: str, *, kv_cache_dtype: str | None = None, smoothquant_alpha: float | None = None,
                    exclude_layers: list[str] | tuple[str, ...] = (), block_size: int | None = None
                    ) -> dict[str, Any] | None:
    """The modelopt quantize config for ``qformat`` (a deep copy; None for full precision)."""
    spec = qformat_spec(qformat)
    if spec.modelopt_cfg is None:
        if kv_cache_dtype:
            raise QuantError("--kv-cache-dtype needs a quantized --qformat", "drop it or choose a qformat")
        return None
    mtq = require("modelopt.torch.quantization", purpose="LLM quantization",
                  install="pip install nvidia-modelopt requests")
    cfg = copy.deepcopy(getattr(mtq, spec.modelopt_cfg))
    entries = cfg["quant_cfg"]
    if smoothquant_alpha is not None:
        if qformat != "int8_sq":
            raise QuantError("--smoothquant-alpha applies to --qformat int8_sq only", "drop it")
        cfg["algorithm"] = {"method": "smoothquant", "alpha": float(smoothquant_alpha)}
    if kv_cache_dtype == "fp8":
        entries.extend(copy.deepcopy(mtq.FP8_KV_CFG["quant_cfg"]))
    elif kv_cache_dtype == "int8":
        entries.append({"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": 8, "axis": None}})
    elif kv_cache_dtype is not None:
        raise QuantError(f"unknown --kv-cache-dtype {kv_cache_dtype!r}", "choose fp8 or int8")
    if block_size is not None:
        _set_block_size(entries, block_size)
    for layer in exclude_layers:  # later entries win in modelopt's list form
        entries.append({"quantizer_name": layer_pattern(layer), "enable": False})
    return cfg


def _set_block_size(entries: list[dict[str, Any]], block_size: int) -> None:
    """INT4 group size along the input dimension (modelopt's default 128 does not divide e.g. hidden 576)."""
    for entry in entries:
        cfgs = entry.get("cfg")
        for cfg in cfgs if isinstance(cfgs, list) else [cfgs] if isinstance(cfgs, dict) else []:
            blocks = cfg.get("block_sizes")
            if isinstance(blocks, dict):
                key = -1 if -1 in blocks else "-1" if "-1" in blocks else None
                if key is not None:
                    blocks[key] = block_size


def has_block_quantization(qformat: str) -> bool:
    return qformat in {"int4_awq", "w4a8_awq", "int4_wo"}


# HF model_type -> preset, for --model given as a folder or hub id.
def preset_for_model_type(model_type: str) -> Preset:
    for name in available_presets():
        preset = load_preset(name)
        if model_type in preset.model_types:
            return preset
    supported = sorted({t for n in available_presets() for t in load_preset(n).model_types})
    raise QuantError(f"model_type {model_type!r} has no preset",
                     f"supported model types: {', '.join(supported)}; add a YAML under configs/llm/")
