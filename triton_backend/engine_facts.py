"""What a repository for the tensorrtllm backend must agree with in the engine: logits dtype, limits, vocab size.

Read from the engine's ``config.json`` (what trtllm-build wrote), else, before the engine exists, from the
TensorRT-LLM checkpoint it will be built from and the trtllm-build command that will build it. The keys and rules
are rows of ``triton_backend/upstream/engine.yaml``, each with its upstream source.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError
from quant_common.facts import Fact, Source, load_table


class LogitsDtype(Fact):
    engine_key: tuple[str, ...]
    checkpoint_key: tuple[str, ...]
    default: str
    runtime_accepts: tuple[str, ...]
    default_source: Source
    override_source: Source
    engine_source: Source


class BackendLogits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_types: dict[str, str]  # engine logits dtype -> the config.pbtxt data_type the backend checks against
    config_source: Source
    checks: tuple[Source, ...]


class BuildLimits(Fact):
    max_input_len: tuple[str, ...]
    max_seq_len: tuple[str, ...]


class EmbeddingBias(Fact):
    vocab_key: tuple[str, ...]
    checkpoint_vocab_key: tuple[str, ...]
    preprocessing_source: Source
    backend_source: Source


class EngineTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    logits_dtype: LogitsDtype
    backend_logits: BackendLogits
    build_limits: BuildLimits
    embedding_bias: EmbeddingBias


def table() -> EngineTable:
    return load_table("triton_backend.upstream", "engine.yaml", EngineTable)


def read_config(folder: Path | None) -> dict[str, Any] | None:
    """``folder/config.json`` as a dict; None when there is none (an engine not built yet)."""
    if folder is None or not (folder / "config.json").is_file():
        return None
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QuantError(f"{folder}/config.json is unreadable or not JSON ({exc})", "rebuild it") from exc
    if not isinstance(data, dict):
        raise QuantError(f"{folder}/config.json is not a JSON object", "rebuild it")
    return data


def _get(config: dict[str, Any] | None, key: Sequence[str]) -> Any:
    value: Any = config
    for part in key:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def engine_logits_dtype(engine_dir: Path | None, checkpoint_dir: Path | None) -> tuple[str, str]:
    """(dtype of the engine's logits, where that was read): the engine's config.json, else the checkpoint's
    (trtllm-build keeps it unless given --logits_dtype), else TensorRT-LLM's default."""
    facts = table().logits_dtype
    engine = read_config(engine_dir)
    if engine is not None:
        value = _get(engine, facts.engine_key)
        return (str(value), f"engine {engine_dir}/config.json") if value else (facts.default, "TensorRT-LLM default")
    value = _get(read_config(checkpoint_dir), facts.checkpoint_key)
    if value:
        return str(value), f"checkpoint {checkpoint_dir}/config.json (the engine is not built yet)"
    return facts.default, "TensorRT-LLM default"


def default_logits_datatype() -> str:
    """The config data_type of TensorRT-LLM's default logits dtype (float32 -> TYPE_FP32)."""
    facts = table()
    return facts.backend_logits.data_types[facts.logits_dtype.default]


def logits_datatype(engine_dir: Path | None, checkpoint_dir: Path | None, requested: str | None) -> str:
    """The ``logits_datatype`` the tensorrt_llm config must declare for this engine (the backend checks equality)."""
    dtype, where = engine_logits_dtype(engine_dir, checkpoint_dir)
    facts = table()
    served = facts.backend_logits.data_types
    if dtype not in facts.logits_dtype.runtime_accepts or dtype not in served:
        raise QuantError(f"the engine's logits are {dtype} ({where}); TensorRT-LLM's runtime loads only "
                         f"{' or '.join(facts.logits_dtype.runtime_accepts)} logits "
                         f"({facts.logits_dtype.source.cite()})",
                         "rebuild the engine with trtllm-build --logits_dtype float32")
    wanted = served[dtype]
    if requested is not None and requested != wanted:
        raise QuantError(f"triton.logits_datatype {requested} contradicts the engine's {dtype} logits ({where}); the "
                         f"backend refuses every logits request whose type differs "
                         f"({facts.backend_logits.checks[-1].cite()})",
                         "drop triton.logits_datatype (it follows the engine) or rebuild with --logits_dtype")
    return wanted


def engine_limits(engine_dir: Path | None) -> tuple[int, int] | None:
    """(max_input_len, max_seq_len) the built engine enforces; None before trtllm-build ran."""
    config = read_config(engine_dir)
    if config is None:
        return None
    facts = table().build_limits
    max_input, max_seq = _get(config, facts.max_input_len), _get(config, facts.max_seq_len)
    if not isinstance(max_input, int) or not isinstance(max_seq, int):
        raise QuantError(f"engine {engine_dir}/config.json has no build_config max_input_len/max_seq_len",
                         "rebuild the engine with trtllm-build")
    return max_input, max_seq


def command_limits(argv: Sequence[str] | str) -> tuple[int, int] | None:
    """(max_input_len, max_seq_len) a recorded trtllm-build command line will build with (None: not given)."""
    args = shlex.split(argv) if isinstance(argv, str) else list(argv)
    values: dict[str, int] = {}
    for flag in ("--max_input_len", "--max_seq_len"):
        if flag in args and args.index(flag) + 1 < len(args):
            try:
                values[flag] = int(args[args.index(flag) + 1])
            except ValueError:
                return None
    if len(values) != 2:
        return None
    return values["--max_input_len"], values["--max_seq_len"]


def vocab_size(engine_dir: Path | None, checkpoint_dir: Path | None, model_config: dict[str, Any] | None
               ) -> int | None:
    """The model's vocabulary size, which an embedding_bias row must match (engine, checkpoint, else HF config)."""
    facts = table().embedding_bias
    for value in (_get(read_config(engine_dir), facts.vocab_key),
                  _get(read_config(checkpoint_dir), facts.checkpoint_vocab_key),
                  _get(model_config, facts.checkpoint_vocab_key)):
        if isinstance(value, int) and value > 0:
            return value
    return None
