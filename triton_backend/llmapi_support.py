"""What TensorRT-LLM's PyTorch backend (the ``llmapi`` Triton model, ``--runtime llmapi``) can run and how its
``model.yaml`` is read, as rows of ``triton_backend/upstream/llmapi.yaml`` with their upstream source.

The backend loads any ``quant_algo`` from the checkpoint's ``hf_quant_config.json`` and only fails when it builds
a Linear it has no method for (SmoothQuant ``W8A8_SQ_*`` among them), i.e. inside Triton on the GPU. We refuse those
checkpoints and qformats before anything is written.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError
from quant_common.facts import Fact, load_table
from quant_common.qformats import (
    QFORMAT_ROWS,  # the qformat table alone: it imports nothing of triton_backend
)


class QuantAlgos(Fact):
    quant_algos: tuple[str, ...]


class HFQuantConfig(Fact):
    file: str
    section: str
    key: str


class ExtraDict(Fact):
    module: str
    function: str


class PytorchLLM(Fact):
    module: str
    name: str
    backend: str


class TritonConfig(Fact):
    keys: tuple[str, ...]
    config_env: str
    config_file: str


class LLMAPITable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    linear_quant_algos: QuantAlgos
    hf_quant_config: HFQuantConfig
    extra_dict: ExtraDict
    pytorch_llm: PytorchLLM
    triton_config: TritonConfig


def table() -> LLMAPITable:
    return load_table("triton_backend.upstream", "llmapi.yaml", LLMAPITable)


def runs_quant_algo(quant_algo: str | None) -> bool:
    """Whether the PyTorch backend has a Linear for ``quant_algo`` (None: not quantized)."""
    return quant_algo is None or quant_algo in table().linear_quant_algos.quant_algos


def supported_qformats() -> list[str]:
    return [row.name for row in QFORMAT_ROWS if runs_quant_algo(row.quant_algo)]


def unsupported_message(what: str, quant_algo: str) -> str:
    return (f"{what} (quant_algo {quant_algo}) cannot run on TensorRT-LLM's PyTorch backend (--runtime llmapi): "
            f"it has no linear layer for it; it runs qformats {', '.join(supported_qformats())}")


def checkpoint_quant_algo(hf_checkpoint_dir: Path) -> str | None:
    """The ``quant_algo`` the backend will read from the checkpoint (None: not quantized)."""
    facts = table().hf_quant_config
    path = hf_checkpoint_dir / facts.file
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantError(f"{path} is unreadable or not JSON ({exc})", "re-export the checkpoint") from exc
    section = data.get(facts.section) if isinstance(data, dict) else None
    algo = section.get(facts.key) if isinstance(section, dict) else None
    return str(algo) if algo else None


def check_checkpoint(hf_checkpoint_dir: Path) -> None:
    """One line, before anything is written, when the checkpoint's quantization has no PyTorch-backend Linear."""
    algo = checkpoint_quant_algo(hf_checkpoint_dir)
    if not runs_quant_algo(algo):
        raise QuantError(unsupported_message(f"checkpoint {hf_checkpoint_dir}", str(algo)),
                         "build with one of those qformats, or package with --runtime tensorrtllm or pytorch")
