"""Shared helpers for llm_quant tests: build configs for the tiny model and read checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llm_quant.pipeline import make_config

TINY_CALIB = {"size": 4, "seq_len": 64, "batch_size": 2}
TINY_EVAL = {"seq_len": 64, "max_tokens": 1024}


def tiny_config(model_dir: Path, out: Path, **overrides: Any):
    parallel = overrides.pop("parallel", None)
    cfg, _, source = make_config(str(model_dir), overrides={"out": out, "device": "cpu", **overrides},
                                 calib=TINY_CALIB, eval_opts=TINY_EVAL, parallel=parallel)
    return cfg, source


def trt_config(out: Path) -> dict[str, Any]:
    return json.loads((out / "trtllm_checkpoint" / "config.json").read_text())


def rank_weights(out: Path, rank: int = 0) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(out / "trtllm_checkpoint" / f"rank{rank}.safetensors"))


def random_llama_model(max_positions: int = 64) -> Any:
    """An in-memory random ``LlamaForCausalLM`` (2 layers, 64 wide, 4 query / 2 KV heads, vocab 128; seed 0), in
    eval mode: for tests of the decode step that need no checkpoint on disk."""
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=max_positions)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()
