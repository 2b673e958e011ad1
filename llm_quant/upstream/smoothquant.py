"""The TensorRT-LLM SmoothQuant plugin facts as data (``trtllm_smoothquant.yaml``): the per-token ``quant_algo``,
the tensors each decoder layer carries, the static-scale tensors it must not carry, and their semantics.

Read by the per-token checkpoint writer and verifier (``llm_quant.export.sq_checkpoint``) and by
:func:`llm_quant.upstream.expected_algorithms`, which sits below the configuration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from quant_common.facts import Fact, load_table

TABLE = "trtllm_smoothquant.yaml"


class QuantAlgoFact(Fact):
    name: str
    per_token: bool
    per_channel: bool


class TensorFact(Fact):
    module: str
    name: str
    dtype: str
    shape: list[str | int]
    value: float | None = None


class NamedFact(Fact):
    module: str
    name: str


class SourcedFact(Fact):
    pass


class HfFact(Fact):
    expressible: bool


class SmoothQuantFacts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    quant_algo: QuantAlgoFact
    tensors: list[TensorFact]
    static_only: list[NamedFact]
    semantics: dict[str, SourcedFact]
    hf_checkpoint: HfFact


def facts() -> SmoothQuantFacts:
    return load_table("llm_quant.upstream", TABLE, SmoothQuantFacts)


def quant_algo() -> str:
    return facts().quant_algo.name
