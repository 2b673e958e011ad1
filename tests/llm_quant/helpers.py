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
