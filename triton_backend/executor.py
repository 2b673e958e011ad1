"""What the TensorRT-LLM executor refuses at model load, checked when a preset or Triton options are read.

The rules are rows of ``triton_backend/upstream/executor.yaml`` with their upstream source: in-flight batching
(``gpt_model_type`` inflight_fused_batching, our default) needs an engine with the GPT attention plugin and a paged
or disabled KV cache; ``V1`` (static) batching is rejected by executors after tensorrtllm_backend v0.19.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from quant_common.facts import Fact, load_table


class InflightBatching(Fact):
    gpt_model_types: tuple[str, ...]


class InflightKVCache(Fact):
    kv_cache_types: tuple[str, ...]
    attention_plugin_off: str


class StaticBatching(Fact):
    gpt_model_type: str
    message: str


class ExecutorTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inflight_batching: InflightBatching
    inflight_kv_cache: InflightKVCache
    static_batching: StaticBatching


def table() -> ExecutorTable:
    return load_table("triton_backend.upstream", "executor.yaml", ExecutorTable)


def engine_batching_problem(kv_cache_type: str, gpt_attention_plugin: str, batching_strategy: str) -> str | None:
    """Why an engine built with these trtllm-build options will not load with this ``gpt_model_type``, or None."""
    facts = table()
    if batching_strategy not in facts.inflight_batching.gpt_model_types:
        return None
    rule = facts.inflight_kv_cache
    if kv_cache_type not in rule.kv_cache_types:
        return (f"trtllm_build.kv_cache_type {kv_cache_type} cannot be served with triton.batching_strategy "
                f"{batching_strategy}: TensorRT-LLM's in-flight batching needs kv_cache_type "
                f"{' or '.join(rule.kv_cache_types)} (use paged)")
    if gpt_attention_plugin == rule.attention_plugin_off:
        return (f"trtllm_build.gpt_attention_plugin {gpt_attention_plugin} cannot be served with "
                f"triton.batching_strategy {batching_strategy}: TensorRT-LLM's in-flight batching needs the GPT "
                "attention plugin (use auto)")
    return None


def batching_warning(batching_strategy: str) -> str | None:
    """V1 still loads on tensorrtllm_backend <= v0.19 but later executors refuse it: say so at package time."""
    rule = table().static_batching
    if batching_strategy != rule.gpt_model_type:
        return None
    return (f"batching_strategy {batching_strategy} (static batching): TensorRT-LLM after v0.19 refuses it at load "
            f"(\"{rule.message}\"); use inflight_fused_batching")
