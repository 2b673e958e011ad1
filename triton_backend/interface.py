"""What the upstream Triton models read and write: tensor names, types and parameters, as data.

Source: TensorRT-LLM v1.2 ``triton_backend/all_models/inflight_batcher_llm/{ensemble,tensorrt_llm,
tensorrt_llm_bls}/config.pbtxt`` (the C++ ``tensorrtllm`` backend and its request interface) and
``triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt`` (the LLM-API python model).

``triton_backend.layout`` builds the repository's models from these definitions and ``triton_backend.client`` maps
its request fields through them. Keeping them in one module leaves one place to make version-aware (what each
upstream backend version reads).
"""

from __future__ import annotations

from triton_backend.config_pbtxt import Tensor
from triton_backend.options import TritonOptions

BYTES, I32, F32, U64, BOOL = "TYPE_STRING", "TYPE_INT32", "TYPE_FP32", "TYPE_UINT64", "TYPE_BOOL"
SCALAR = (1,)


def scalar(name: str, data_type: str, optional: bool = True, reshape: bool = True) -> Tensor:
    return Tensor(name, data_type, SCALAR, optional=optional, reshape=() if reshape else None)


# --- ensemble (and BLS) request interface: what clients send -------------------------------------------------
ENSEMBLE_INPUTS = (
    Tensor("text_input", BYTES, SCALAR),
    Tensor("max_tokens", I32, SCALAR),
    Tensor("bad_words", BYTES, (-1,), optional=True),
    Tensor("stop_words", BYTES, (-1,), optional=True),
    Tensor("end_id", I32, SCALAR, optional=True),
    Tensor("pad_id", I32, SCALAR, optional=True),
    Tensor("top_k", I32, SCALAR, optional=True),
    Tensor("top_p", F32, SCALAR, optional=True),
    Tensor("temperature", F32, SCALAR, optional=True),
    Tensor("repetition_penalty", F32, SCALAR, optional=True),
    Tensor("min_tokens", I32, SCALAR, optional=True),
    Tensor("seed", U64, SCALAR, optional=True),
    Tensor("stream", BOOL, SCALAR, optional=True),
)
ENSEMBLE_OUTPUTS = (Tensor("text_output", BYTES, (-1,)),)
# The ensemble also returns how many tokens each response carries (tokens/s without re-tokenizing text).
ENSEMBLE_EXTRA_OUTPUTS = (Tensor("sequence_length", I32, (-1,)),)

# --- core model (tensorrt_llm) interface ----------------------------------------------------------------------
# Inputs the embedded PyTorch runtime implements; Triton itself rejects any other input with a clear message.
CORE_INPUTS = (
    Tensor("input_ids", I32, (-1,), ragged=True),
    scalar("input_lengths", I32, optional=False),
    scalar("request_output_len", I32, optional=False),
    scalar("end_id", I32),
    scalar("pad_id", I32),
    Tensor("stop_words_list", I32, (2, -1), optional=True, ragged=True),
    Tensor("bad_words_list", I32, (2, -1), optional=True, ragged=True),
    scalar("beam_width", I32),
    scalar("temperature", F32),
    scalar("runtime_top_k", I32),
    scalar("runtime_top_p", F32),
    scalar("repetition_penalty", F32),
    scalar("min_tokens", I32),
    scalar("seed", U64),
    scalar("exclude_input_in_output", BOOL),
    scalar("streaming", BOOL),
)
CORE_OUTPUTS = (
    Tensor("output_ids", I32, (-1, -1)),
    Tensor("sequence_length", I32, (-1,)),
)


def trtllm_only_inputs(opts: TritonOptions) -> tuple[Tensor, ...]:
    """Further inputs the C++ backend understands (sampling/penalty knobs, logits requests, encoder input)."""
    return (
        Tensor("encoder_input_features", opts.encoder_input_features_data_type, (-1, -1), optional=True,
               ragged=True),
        scalar("encoder_output_lengths", I32),
        Tensor("embedding_bias", F32, (-1,), optional=True, ragged=True),
        scalar("num_return_sequences", I32),
        scalar("len_penalty", F32),
        scalar("early_stopping", BOOL),
        scalar("presence_penalty", F32),
        scalar("frequency_penalty", F32),
        scalar("return_log_probs", BOOL),
        scalar("return_context_logits", BOOL),
        scalar("return_generation_logits", BOOL),
        scalar("stop", BOOL),
    )


def trtllm_only_outputs(opts: TritonOptions) -> tuple[Tensor, ...]:
    return (
        Tensor("cum_log_probs", F32, (-1,)),
        Tensor("output_log_probs", F32, (-1, -1)),
        Tensor("context_logits", opts.logits_datatype, (-1, -1)),
        Tensor("generation_logits", opts.logits_datatype, (-1, -1, -1)),
        Tensor("batch_index", I32, SCALAR),
    )


def tensorrtllm_parameters(opts: TritonOptions, engine_dir: str) -> dict[str, object]:
    """Parameters the C++ ``tensorrtllm`` backend reads (template names in comments where they differ)."""
    params: dict[str, object] = {
        "max_beam_width": opts.max_beam_width,
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "gpt_model_type": opts.batching_strategy,  # batching_strategy
        "gpt_model_path": engine_dir,  # engine_dir
        "batch_scheduler_policy": opts.batch_scheduler_policy,
        "kv_cache_free_gpu_mem_fraction": opts.kv_cache_free_gpu_mem_fraction,
        "exclude_input_in_output": opts.exclude_input_in_output,
        "enable_kv_cache_reuse": opts.enable_kv_cache_reuse,
        "enable_chunked_context": opts.enable_chunked_context,
        "normalize_log_probs": True,
    }
    if opts.max_tokens_in_paged_kv_cache is not None:
        params["max_tokens_in_paged_kv_cache"] = opts.max_tokens_in_paged_kv_cache
    return params


# --- the LLM-API model (``--runtime llmapi``) -------------------------------------------------------------------
LLMAPI_INPUTS = (
    Tensor("text_input", BYTES, (-1,)),
    Tensor("streaming", BOOL, SCALAR, optional=True),
    Tensor("sampling_param_max_tokens", I32, SCALAR, optional=True),
    Tensor("sampling_param_temperature", F32, SCALAR, optional=True),
    Tensor("sampling_param_top_k", I32, SCALAR, optional=True),
    Tensor("sampling_param_top_p", F32, SCALAR, optional=True),
    Tensor("sampling_param_seed", U64, SCALAR, optional=True),
    Tensor("sampling_param_stop", BYTES, (-1,), optional=True),
    Tensor("sampling_param_exclude_input_from_output", BOOL, SCALAR, optional=True),
)
LLMAPI_OUTPUTS = (Tensor("text_output", BYTES, (-1,)), Tensor("finish_reason", BYTES, (-1,)))

# --- what a client sends: request field -> input name, per model interface ------------------------------------
ENSEMBLE_REQUEST = {"max_tokens": "max_tokens", "stream": "stream", "temperature": "temperature", "top_k": "top_k",
                    "top_p": "top_p", "seed": "seed", "stop_words": "stop_words", "bad_words": "bad_words"}
LLMAPI_REQUEST = {"max_tokens": "sampling_param_max_tokens", "stream": "streaming",
                  "temperature": "sampling_param_temperature", "top_k": "sampling_param_top_k",
                  "top_p": "sampling_param_top_p", "seed": "sampling_param_seed", "stop_words": "sampling_param_stop"}
REQUEST_NUMPY_TYPES = {"max_tokens": "int32", "top_k": "int32", "temperature": "float32", "top_p": "float32",
                       "seed": "uint64", "stream": "bool"}
