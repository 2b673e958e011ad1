"""Options of a Triton model repository (a preset's ``triton:`` section), as a pydantic model."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Runtime = Literal["tensorrtllm", "pytorch", "llmapi"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# "auto": tensorrtllm where an engine was built, else pytorch (triton_backend.repository.choose_runtime)
RuntimeChoice = Literal["auto", "tensorrtllm", "pytorch", "llmapi"]
DataType = Literal["TYPE_FP32", "TYPE_FP16", "TYPE_BF16"]


class TritonOptions(BaseModel):
    """How the repository is served. Field names follow the TensorRT-LLM backend's template parameters."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=8, ge=1, description="triton_max_batch_size of every model")
    decoupled: bool = Field(default=True, description="decoupled_mode: needed for streaming responses")
    max_queue_delay_microseconds: int = Field(default=0, ge=0)
    max_queue_size: int = Field(default=0, ge=0, description="0 = unbounded queue")
    batching_strategy: Literal["inflight_fused_batching", "V1"] = "inflight_fused_batching"
    batch_scheduler_policy: Literal["guaranteed_no_evict", "max_utilization"] = "guaranteed_no_evict"
    kv_cache_free_gpu_mem_fraction: float = Field(default=0.9, gt=0.0, le=1.0)
    max_tokens_in_paged_kv_cache: int | None = Field(default=None, ge=1)
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    max_beam_width: int = Field(default=1, ge=1)
    exclude_input_in_output: bool = True
    # None: the engine's logits dtype (the backend checks the two are equal, triton_backend.engine_facts)
    logits_datatype: DataType | None = None
    encoder_input_features_data_type: DataType = "TYPE_FP16"
    preprocessing_instance_count: int = Field(default=1, ge=1)
    postprocessing_instance_count: int = Field(default=1, ge=1)
    model_instance_count: int = Field(default=1, ge=1, description="instances of the python-backend core model")
    bls_instance_count: int = Field(default=1, ge=1)
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    max_input_len: int | None = Field(default=None, ge=1, description="default: engine/model limit")
    max_seq_len: int | None = Field(default=None, ge=2, description="prompt + generated tokens; default: model limit")
    default_max_tokens: int = Field(default=64, ge=1, description="used by the BLS model when max_tokens is absent")
    # On by default since the int8 kernels: 8 clients x 30 s on the (loaded) 2-core CPU served 5.04 tokens/s batched
    # vs 4.63 one by one (benchmarks/serving.py --compare, SmolLM2-135M int8_sq), and in-process 8 batched greedy
    # requests decode 6.8x the tokens/s of one at a time (benchmarks/llm_runtime.py). With fake quantization
    # batching had been slower here (0.46 vs 0.76 tokens/s).
    batch_requests: bool = Field(default=True, description="pytorch runtime: batch concurrent greedy requests")
    torch_threads: int = Field(default=0, ge=0, description="pytorch runtime: intra-op threads (0 = torch default)")
