"""Format conformance of a TensorRT-LLM checkpoint: config keys, rank files, quantized tensors and scales.

Checks what ``trtllm-build`` will rely on, so a bad export fails here (with one line) rather than on a GPU box.
Also the HF-config facts a checkpoint must carry over (``rope_theta`` -> ``rotary_base``, ``rotary_scaling``),
which ``llm_quant.export.checkpoints`` writes and this module checks.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_quant.calibration.exclusions import trtllm_patterns
from llm_quant.export import sq_checkpoint
from llm_quant.upstream import trtllm_facts
from llm_quant.upstream.loader import loader_facts
from quant_common.errors import QuantError, require
from quant_common.qformats import CHECKPOINT_TENSORS
from triton_backend.engine_facts import table as engine_table

REQUIRED_KEYS = ("architecture", "dtype", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "hidden_act", "max_position_embeddings", "mapping", "quantization")
# Linear layers of a TensorRT-LLM decoder layer; the tensors each quant_algo gives them are in quant_common.qformats.
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")
KV_TENSOR = "attention.kv_cache_scaling_factor"


def rope_theta(hf_config: Any) -> float | None:
    """rope_theta from a transformers 4 (``rope_theta``) or 5 (``rope_parameters``) config."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    value = getattr(hf_config, "rope_theta", None)
    return float(value) if value is not None else None


def rope_scaling(hf_config: Any) -> dict[str, Any] | None:
    """TensorRT-LLM's ``rotary_scaling`` (type + factors) for non-default RoPE, else None."""
    params = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    if not isinstance(params, dict):
        return None
    kind = params.get("rope_type") or params.get("type")
    if not kind or kind == "default":
        return None
    scaling = {"type": kind}
    scaling.update({k: v for k, v in params.items() if k not in {"rope_type", "type", "rope_theta"}})
    return scaling


def fix_layer_globs(patterns: list[str]) -> tuple[list[str], list[str]]:
    """modelopt writes ``transformer.layers.1*``, which fnmatch also matches for layers 10-19: make it exact."""
    fixed, changes = [], []
    for pattern in patterns:
        match = re.fullmatch(r"(.*layers\.\d+)\*", pattern)
        new = f"{match.group(1)}.*" if match else pattern
        if new != pattern:
            changes.append(f"exclude_modules {pattern} -> {new}")
        if new not in fixed:
            fixed.append(new)
    return fixed, changes


def is_excluded(name: str, exclude_modules: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude_modules)


def _fail(folder: Path, problem: str) -> QuantError:
    return QuantError(f"TensorRT-LLM checkpoint {folder} is malformed: {problem}",
                      "this is an export bug; rerun with QUANT_DEBUG=1 and report it")


# safetensors header dtypes (the format's spec) as torch names
_STORED_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "I32": "int32",
                  "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16", "BF16": "bfloat16",
                  "F32": "float32", "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a rank file as its header describes it; ``float()`` alone reads its values. The checks need
    dtypes and shapes: reading the 8 GB rank of an 8B model to get them cost seconds and as much host memory."""

    path: Path
    name: str
    dtype: str
    shape: tuple[int, ...]

    def dim(self) -> int:
        return len(self.shape)

    def float(self) -> Any:
        safetensors = require("safetensors", purpose="reading checkpoint weights")
        with safetensors.safe_open(str(self.path), framework="pt") as handle:
            return handle.get_tensor(self.name).float()


def rank_tensors(folder: Path, rank: int) -> dict[str, StoredTensor]:
    """Every tensor of ``rank<rank>.safetensors``, from its header."""
    safetensors = require("safetensors", purpose="reading checkpoint weights")
    path = folder / f"rank{rank}.safetensors"
    out: dict[str, StoredTensor] = {}
    with safetensors.safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():
            view = handle.get_slice(name)
            stored = view.get_dtype()
            dtype = _STORED_DTYPES.get(stored) or str(handle.get_tensor(name).dtype).removeprefix("torch.")
            out[name] = StoredTensor(path, name, dtype, tuple(int(d) for d in view.get_shape()))
    return out


def verify_trtllm_checkpoint(folder: str | Path, *, hf_config: Any | None = None,
                             expect_excluded: list[str] | None = None) -> dict[str, Any]:
    """Raise on any conformance problem; return a summary (quant_algo, ranks, quantized layer count).

    Linears matched by ``exclude_modules`` must be stored unquantized (checkpoint dtype, no scales);
    ``expect_excluded`` (HF layer/linear names kept in higher precision) must each be in ``exclude_modules``."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise _fail(folder, f"config.json unreadable ({exc})") from exc
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise _fail(folder, f"config.json lacks {', '.join(missing)}")
    mapping = config["mapping"]
    world = int(mapping.get("world_size", 0))
    if world != int(mapping.get("tp_size", 1)) * int(mapping.get("pp_size", 1)):
        raise _fail(folder, f"mapping {mapping} has world_size != tp_size * pp_size")
    ranks = sorted(folder.glob("rank*.safetensors"))
    if len(ranks) != world or any(not (folder / f"rank{r}.safetensors").is_file() for r in range(world)):
        raise _fail(folder, f"expected rank0..rank{world - 1}.safetensors, found {[p.name for p in ranks]}")
    if hf_config is not None:
        _check_against_hf(folder, config, hf_config)
    logits = engine_table().logits_dtype
    if config.get("logits_dtype", logits.default) not in logits.runtime_accepts:
        raise _fail(folder, f"logits_dtype {config['logits_dtype']}: TensorRT-LLM's runtime loads only "
                            f"{' or '.join(logits.runtime_accepts)} logits ({logits.source.cite()})")
    quant = config["quantization"]
    algo = quant.get("quant_algo")
    excluded = list(quant.get("exclude_modules") or [])
    weights = rank_tensors(folder, 0)
    if algo:
        _check_exclusions(folder, config, excluded, weights, expect_excluded or [])
    quantized_layers = 0
    if algo == sq_checkpoint.quant_algo():  # per-token SmoothQuant: its own fact table
        quantized_layers = sq_checkpoint.verify_per_token(weights, config, lambda problem: _fail(folder, problem))
        if quantized_layers == 0:
            raise _fail(folder, f"quant_algo {algo} but no quantized linear layer in rank0")
    elif algo in CHECKPOINT_TENSORS:
        _check_group_size(folder, algo, quant.get("group_size"))
        dtype, scales = CHECKPOINT_TENSORS[algo].weight_dtype, CHECKPOINT_TENSORS[algo].scales
        dtype = config["dtype"] if dtype == "model" else dtype
        if quant.get("pre_quant_scale"):  # TensorRT-LLM then creates (and requires) the AWQ pre-quant scales
            scales = (*scales, "prequant_scaling_factor")
        loader = loader_facts()
        by_loader = algo in loader.loader_quantized.quant_algos
        if by_loader:
            _check_loader_exclusions(folder, algo, excluded)
        for layer in range(_layers_in_rank(config)):
            for linear in LINEARS:
                name = f"transformer.layers.{layer}.{linear}"
                if f"{name}.weight" not in weights or is_excluded(name, excluded):
                    continue
                got = str(weights[f"{name}.weight"].dtype).removeprefix("torch.")
                if got != dtype:
                    why = (" (TensorRT-LLM quantizes these weights itself while loading and skips int8 ones, "
                           f"{loader.loader_quantized.source.cite()})" if by_loader else "")
                    raise _fail(folder, f"{name}.weight is {got}, {algo} needs {dtype}{why}")
                absent = [s for s in scales if f"{name}.{s}" not in weights]
                if absent:
                    raise _fail(folder, f"{name} lacks {', '.join(absent)} for {algo}")
                stray = [s for s in loader.loader_quantized.absent if by_loader and f"{name}.{s}" in weights]
                if stray:
                    raise _fail(folder, f"{name} carries {', '.join(stray)}, which {algo} does not take")
                if algo in loader.groupwise.quant_algos:
                    _check_groupwise(folder, name, weights, int(quant.get("group_size") or 0))
                quantized_layers += 1
        if quantized_layers == 0:
            raise _fail(folder, f"quant_algo {algo} but no quantized linear layer in rank0")
    kv_algo = quant.get("kv_cache_quant_algo")
    if kv_algo and not any(k.endswith(KV_TENSOR) for k in weights):
        raise _fail(folder, f"kv_cache_quant_algo {kv_algo} but no {KV_TENSOR} tensors")
    return {"quant_algo": algo, "kv_cache_quant_algo": kv_algo, "world_size": world,
            "quantized_linears_rank0": quantized_layers, "exclude_modules": excluded}


def _check_exclusions(folder: Path, config: dict[str, Any], excluded: list[str], weights: dict[str, Any],
                      expected: list[str]) -> None:

    missing = [p for p in trtllm_patterns(expected) if p not in excluded]
    if missing:
        raise _fail(folder, f"exclude_modules lacks {', '.join(missing)} (kept in higher precision)")
    scale_suffixes = {s for row in CHECKPOINT_TENSORS.values() for s in row.scales} | {"prequant_scaling_factor"}
    for layer in range(_layers_in_rank(config)):
        for linear in LINEARS:
            name = f"transformer.layers.{layer}.{linear}"
            if f"{name}.weight" not in weights or not is_excluded(name, excluded):
                continue
            got = str(weights[f"{name}.weight"].dtype).removeprefix("torch.")
            scales = sorted(s for s in scale_suffixes if f"{name}.{s}" in weights)
            if got != config["dtype"] or scales:
                raise _fail(folder, f"{name} is excluded from quantization but stored as {got}"
                            + (f" with {', '.join(scales)}" if scales else ""))


def _check_loader_exclusions(folder: Path, algo: str, excluded: list[str]) -> None:
    """A listed exclude_modules replaces TensorRT-LLM's defaults (the vocab embedding would be weight-only
    quantized, wanting a per_token_scale nobody writes), and the loader matches weight names: a linear kept in
    higher precision needs its ``.weight`` pattern too."""
    facts = loader_facts().loader_quantized
    if excluded:
        lacking = [p for p in facts.exclude_modules_kept if p not in excluded]
        if lacking:
            raise _fail(folder, f"{algo} exclude_modules lacks {', '.join(lacking)}, which TensorRT-LLM's defaults "
                                f"keep in higher precision ({facts.exclude_source.cite()})")
    for pattern in excluded:
        if re.search(r"layers\.\d+\.", pattern) and not pattern.endswith(("*", facts.weight_name_suffix)) and \
                pattern + facts.weight_name_suffix not in excluded:
            raise _fail(folder, f"{algo} exclude_modules has {pattern} but not {pattern}{facts.weight_name_suffix}: "
                                f"TensorRT-LLM would quantize that weight ({facts.weight_name_source.cite()})")


def _check_groupwise(folder: Path, name: str, weights: dict[str, Any], group_size: int) -> None:
    """INT4 blocks as TensorRT-LLM's loader takes them: int8 [out/2, in] (two values per byte along the output),
    scales [out, in/group] with out > in/group (the loader transposes them only then)."""
    facts = loader_facts().groupwise
    weight, scale = weights[f"{name}.weight"], weights[f"{name}.{facts.scale}"]
    if scale.dim() != 2 or weight.dim() != 2 or group_size <= 0:
        raise _fail(folder, f"{name}: weight {tuple(weight.shape)} / {facts.scale} {tuple(scale.shape)} are not 2-D")
    out, groups = scale.shape
    if tuple(weight.shape) != (out // 2, groups * group_size) or out % 2 or out <= groups:
        raise _fail(folder, f"{name}: weight {tuple(weight.shape)} and {facts.scale} {tuple(scale.shape)} are not "
                            f"[out/2, in] and [out, in/{group_size}] with out > in/{group_size} "
                            f"({facts.source.cite()})")


def _check_group_size(folder: Path, algo: str, group_size: Any) -> None:
    """INT4 formats: the group size must be one TensorRT-LLM's kernels take for ``algo`` (trtllm_build.yaml)."""
    try:
        allowed = trtllm_facts().group_sizes_for(algo)
    except KeyError:  # not a groupwise INT4 quant_algo
        return
    if group_size not in allowed:
        raise _fail(folder, f"quantization.group_size {group_size} for {algo}; TensorRT-LLM takes "
                            f"{' or '.join(map(str, allowed))}")


def _layers_in_rank(config: dict[str, Any]) -> int:
    pp = int(config["mapping"].get("pp_size", 1))
    return -(-int(config["num_hidden_layers"]) // pp)


def _check_against_hf(folder: Path, config: dict[str, Any], hf_config: Any) -> None:
    pairs = {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_hidden_layers",
             "num_attention_heads": "num_attention_heads"}
    for key, hf_key in pairs.items():
        if getattr(hf_config, hf_key, None) is not None and config[key] != getattr(hf_config, hf_key):
            raise _fail(folder, f"{key} {config[key]} != model's {getattr(hf_config, hf_key)}")
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads
    if config["num_key_value_heads"] != kv_heads:
        raise _fail(folder, f"num_key_value_heads {config['num_key_value_heads']} != model's {kv_heads}")
    theta = rope_theta(hf_config)
    if theta is not None and config.get("rotary_base") != theta:
        raise _fail(folder, f"rotary_base {config.get('rotary_base')} != model's rope_theta {theta}")
