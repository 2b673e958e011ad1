"""What TensorRT-LLM's checkpoint loader requires per quant_algo (``trtllm_loader.yaml``), as data.

Two kinds of weight-only checkpoint: W8A16/W4A16, whose weights TensorRT-LLM quantizes itself when it loads them
(the checkpoint carries them unquantized, as TensorRT-LLM's own modelopt flow exports int8_wo), and W4A16_AWQ,
which carries modelopt's packed INT4 blocks. The export (``llm_quant.export.checkpoints``) and the verifier
(``llm_quant.export.verify``) both read these rows.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from quant_common.facts import Fact, Source, load_table


class LoaderQuantized(Fact):
    quant_algos: tuple[str, ...]
    weight_dtype: str  # "model": the checkpoint dtype (config.json "dtype")
    absent: tuple[str, ...]
    load_source: Source
    layer_source: Source
    upstream_flow_source: Source
    release_source: Source
    exclude_modules_kept: tuple[str, ...]
    exclude_source: Source
    embedding_source: Source
    weight_name_suffix: str
    weight_name_source: Source


class Groupwise(Fact):
    quant_algos: tuple[str, ...]
    weight_dtype: str
    weight_shape: tuple[str, ...]
    scale: str
    scale_shape: tuple[str, ...]
    prequant: str
    layer_source: Source
    flag_source: Source


class LoaderTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    loader_quantized: LoaderQuantized
    groupwise: Groupwise


def loader_facts() -> LoaderTable:
    return load_table("llm_quant.upstream", "trtllm_loader.yaml", LoaderTable)


def loader_quantizes(quant_algo: str | None) -> bool:
    """True where TensorRT-LLM quantizes the weights itself while loading the checkpoint (W8A16, W4A16)."""
    return quant_algo in loader_facts().loader_quantized.quant_algos


def loader_exclude_modules(patterns: list[str]) -> list[str]:
    """``exclude_modules`` for a loader-quantized checkpoint: TensorRT-LLM's defaults (a listed value replaces
    them), then ``patterns``, each linear one also as its weight's name (the loader matches weight names)."""
    facts = loader_facts().loader_quantized
    out = list(facts.exclude_modules_kept)
    for pattern in patterns:
        for item in (pattern, pattern + facts.weight_name_suffix if not pattern.endswith("*") else None):
            if item is not None and item not in out:
                out.append(item)
    return out
