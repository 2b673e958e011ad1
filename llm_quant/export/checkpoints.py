"""Writers of the three build artifacts: TensorRT-LLM checkpoint, HF unified checkpoint, embedded runtime.

modelopt writes the checkpoints; this module then corrects what modelopt gets wrong (seen with nvidia-modelopt
0.47): under transformers 5 ``export_tensorrt_llm_checkpoint`` silently drops ``rotary_base`` (rope_theta) and
``rotary_scaling``; ``export_hf_checkpoint`` fails without ``config.architectures``; INT4 weight-only is marked
``pre_quant_scale`` without the tensors; layer globs in ``exclude_modules`` match too much. Every directory is
staged and swapped in whole.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llm_quant.calibration.exclusions import hf_pattern, trtllm_patterns
from llm_quant.export import sq_checkpoint, verify
from llm_quant.export.verify import rope_scaling, rope_theta
from llm_quant.upstream.loader import loader_exclude_modules, loader_quantizes
from quant_common.atomic import atomic_write_json, staged_dir
from quant_common.errors import QuantError, require
from triton_backend.engine_facts import table as engine_table


def correct_trtllm_config(config: dict[str, Any], hf_config: Any, exclude_modules: list[str]) -> list[str]:
    """Fix modelopt's known omissions in place; returns a description of each change."""
    changes = []
    theta = rope_theta(hf_config)
    if theta is not None and config.get("rotary_base") != theta:
        changes.append(f"rotary_base {config.get('rotary_base')} -> {theta}")
        config["rotary_base"] = theta
    scaling = rope_scaling(hf_config)
    if scaling is not None and not config.get("rotary_scaling"):
        changes.append(f"rotary_scaling -> {scaling}")
        config["rotary_scaling"] = scaling
    model_type = str(getattr(hf_config, "model_type", "") or "")
    if model_type.startswith("qwen") and not config.get("qwen_type"):
        # TensorRT-LLM's QWenForCausalLM reads config.qwen_type (models/qwen/model.py), which only its own
        # from_hugging_face sets; modelopt's export without TensorRT-LLM installed leaves it out.
        changes.append(f"qwen_type -> {model_type}")
        config["qwen_type"] = model_type
    logits = engine_table().logits_dtype
    if config.get("logits_dtype", logits.default) not in logits.runtime_accepts:
        # modelopt writes the checkpoint dtype; TensorRT-LLM's runtime refuses to load bfloat16 logits
        # (triton_backend/upstream/engine.yaml): its own default instead
        changes.append(f"logits_dtype {config['logits_dtype']} -> {logits.default}")
        config["logits_dtype"] = logits.default
    architectures = getattr(hf_config, "architectures", None) or []
    if not config.get("architecture") and architectures:
        changes.append(f"architecture -> {architectures[0]}")
        config["architecture"] = architectures[0]
    quant = config.setdefault("quantization", {})
    if quant.get("quant_algo"):
        excluded, glob_changes = verify.fix_layer_globs(list(quant.get("exclude_modules") or []))
        changes.extend(glob_changes)
        for pattern in trtllm_patterns(exclude_modules):  # HF layers/linears -> TensorRT-LLM module names
            if pattern not in excluded:
                excluded.append(pattern)
                changes.append(f"exclude_modules += {pattern}")
        quant["exclude_modules"] = excluded
    return changes


@contextlib.contextmanager
def _weights_unquantized(model: Any, enabled: bool) -> Iterator[None]:
    """While exporting, the weight quantizers that are on are switched off (the model itself is unchanged after)."""
    switched = [module for name, module in model.named_modules()
                if enabled and name.endswith("weight_quantizer") and getattr(module, "is_enabled", False)]
    for quantizer in switched:
        quantizer.disable()
    try:
        yield
    finally:
        for quantizer in switched:
            quantizer.enable()


def label_loader_quantized(config: dict[str, Any], quant_algo: str, exclude_modules: list[str]) -> list[str]:
    """Label an unquantized export ``quant_algo`` (W8A16): TensorRT-LLM quantizes such weights while loading.
    ``exclude_modules`` keeps TensorRT-LLM's defaults (a listed value replaces them) and names each linear kept in
    higher precision by module and by weight (``llm_quant/upstream/trtllm_loader.yaml``)."""
    quant = config.setdefault("quantization", {})
    before = dict(quant)
    quant["quant_algo"] = quant_algo
    quant["exclude_modules"] = loader_exclude_modules(trtllm_patterns(exclude_modules))
    for key in ("group_size", "has_zero_point", "pre_quant_scale"):
        quant.pop(key, None)
    return [f"quantization {before} -> {quant} (weights exported unquantized; TensorRT-LLM quantizes {quant_algo} "
            "weights while loading)"]


def export_trtllm(model: Any, hf_config: Any, out_dir: Path, *, decoder_type: str, dtype: str, tp_size: int,
                  pp_size: int, exclude_modules: list[str], sq_activations: str = "per_tensor",
                  quant_algo: str | None = None) -> dict[str, Any]:
    """modelopt's TensorRT-LLM export, corrected; ``sq_activations="per_token"`` rewrites its int8_sq output into
    the per-token SmoothQuant checkpoint (``llm_quant.export.sq_checkpoint``). ``quant_algo``: the qformat's; one
    TensorRT-LLM quantizes itself while loading (W8A16) is exported with the weights unquantized and labelled so,
    as TensorRT-LLM's own modelopt flow does ("Workaround for wo quantization")."""
    torch = require("torch", purpose="exporting the TensorRT-LLM checkpoint")
    export = require("modelopt.torch.export", purpose="exporting the TensorRT-LLM checkpoint")
    by_loader = loader_quantizes(quant_algo)
    with staged_dir(out_dir) as tmp:
        try:
            with _weights_unquantized(model, by_loader):
                export.export_tensorrt_llm_checkpoint(model, decoder_type, getattr(torch, dtype), str(tmp),
                                                      inference_tensor_parallel=tp_size,
                                                      inference_pipeline_parallel=pp_size)
        except Exception as exc:  # noqa: BLE001 - unsupported decoder/parallel layout: one line
            raise QuantError(f"modelopt could not export a TensorRT-LLM checkpoint (decoder {decoder_type!r}, "
                             f"tp {tp_size}, pp {pp_size}): {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}",
                             "check the preset's decoder_type and that tp divides the head counts") from exc
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        changes = correct_trtllm_config(config, hf_config, exclude_modules)
        changes += _correct_pre_quant_scale(config, tmp)
        if by_loader:
            assert quant_algo is not None
            changes += label_loader_quantized(config, quant_algo, exclude_modules)
        atomic_write_json(config_path, config)
        if sq_activations == "per_token":
            changes += sq_checkpoint.to_per_token(tmp)
            config = json.loads(config_path.read_text())
        for rank in range(tp_size * pp_size):  # modelopt writes one config per rank as well when tp/pp > 1
            rank_cfg = tmp / f"config_rank{rank}.json"
            if rank_cfg.is_file():
                rank_config = json.loads(rank_cfg.read_text())
                correct_trtllm_config(rank_config, hf_config, exclude_modules)
                if by_loader:
                    assert quant_algo is not None
                    label_loader_quantized(rank_config, quant_algo, exclude_modules)
                atomic_write_json(rank_cfg, rank_config)
        verify.verify_trtllm_checkpoint(tmp, hf_config=hf_config, expect_excluded=exclude_modules)
    return {"path": str(out_dir), "corrections": changes, "config": config}


def _correct_pre_quant_scale(config: dict[str, Any], folder: Path) -> list[str]:
    """modelopt marks INT4 weight-only (no AWQ search) ``pre_quant_scale: true`` but writes no
    ``prequant_scaling_factor``; TensorRT-LLM would then expect tensors that are not there."""
    quant = config.get("quantization", {})
    if not quant.get("pre_quant_scale"):
        return []
    safetensors = require("safetensors", purpose="reading checkpoint weights")
    for rank in sorted(folder.glob("rank*.safetensors")):
        with safetensors.safe_open(str(rank), framework="pt") as handle:
            if any(key.endswith("prequant_scaling_factor") for key in handle.keys()):
                return []
    quant["pre_quant_scale"] = False
    return ["pre_quant_scale true -> false (no prequant_scaling_factor tensors were written)"]


def export_hf(model: Any, tokenizer: Any, out_dir: Path, *, dtype: str, exclude_modules: list[str]) -> dict[str, Any]:
    torch = require("torch", purpose="exporting the HF checkpoint")
    export = require("modelopt.torch.export", purpose="exporting the HF checkpoint")
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]  # export_hf_checkpoint fails without it
    with staged_dir(out_dir) as tmp:
        try:
            export.export_hf_checkpoint(model, getattr(torch, dtype), str(tmp))
        except Exception as exc:  # noqa: BLE001
            raise QuantError(f"modelopt could not export the HF checkpoint: {exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}",
                             "try --no-hf-checkpoint or another --qformat") from exc
        tokenizer.save_pretrained(str(tmp))
        ignored = _hf_fix_ignore(tmp, exclude_modules)
    return {"path": str(out_dir), "ignore": ignored}


def _hf_fix_ignore(folder: Path, exclude_modules: list[str]) -> list[str]:
    """Make sure every layer or linear kept in higher precision is in the HF quantization_config ignore list."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return []
    ignore, _ = verify.fix_layer_globs(list(qc.get("ignore") or []))
    for module in exclude_modules:
        if not any(_covers(p, module) for p in ignore):
            ignore.append(hf_pattern(module))
    qc["ignore"] = ignore
    atomic_write_json(config_path, config)
    quant_path = folder / "hf_quant_config.json"
    if quant_path.is_file():
        hq = json.loads(quant_path.read_text())
        q = hq.get("quantization", {})
        excl, _ = verify.fix_layer_globs(list(q.get("exclude_modules") or []))
        excl += [p for p in ignore if p not in excl]
        q["exclude_modules"] = excl
        atomic_write_json(quant_path, hq)
    return ignore


def _covers(pattern: str, module: str) -> bool:
    """A layer is covered when a pattern matches its subtree; a linear when a pattern matches its name."""
    return fnmatch.fnmatchcase(module, pattern) or fnmatch.fnmatchcase(module + ".self_attn.q_proj", pattern)
