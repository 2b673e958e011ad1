"""The models of an ``inflight_batcher_llm``-shaped repository, as :class:`ModelSpec` data (our templates).

Tensor names and meanings follow the TensorRT-LLM backend's interface (TRT-LLM 1.2 ``triton_backend``), so the
same ensemble, preprocessing, postprocessing and BLS models drive either the C++ ``tensorrtllm`` backend or our
python-backend ``tensorrt_llm`` model (the embedded PyTorch runtime).
"""

from __future__ import annotations

from triton_backend.config_pbtxt import EnsembleStep, ModelSpec, Tensor
from triton_backend.options import TritonOptions

BYTES, I32, F32, U64, BOOL = "TYPE_STRING", "TYPE_INT32", "TYPE_FP32", "TYPE_UINT64", "TYPE_BOOL"
SCALAR = (1,)


def _scalar(name: str, data_type: str, optional: bool = True, reshape: bool = True) -> Tensor:
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
    _scalar("input_lengths", I32, optional=False),
    _scalar("request_output_len", I32, optional=False),
    _scalar("end_id", I32),
    _scalar("pad_id", I32),
    Tensor("stop_words_list", I32, (2, -1), optional=True, ragged=True),
    Tensor("bad_words_list", I32, (2, -1), optional=True, ragged=True),
    _scalar("beam_width", I32),
    _scalar("temperature", F32),
    _scalar("runtime_top_k", I32),
    _scalar("runtime_top_p", F32),
    _scalar("repetition_penalty", F32),
    _scalar("min_tokens", I32),
    _scalar("seed", U64),
    _scalar("exclude_input_in_output", BOOL),
    _scalar("streaming", BOOL),
)
CORE_OUTPUTS = (
    Tensor("output_ids", I32, (-1, -1)),
    Tensor("sequence_length", I32, (-1,)),
)


def _trtllm_only_inputs(opts: TritonOptions) -> tuple[Tensor, ...]:
    """Further inputs the C++ backend understands (sampling/penalty knobs, logits requests, encoder input)."""
    return (
        Tensor("encoder_input_features", opts.encoder_input_features_data_type, (-1, -1), optional=True,
               ragged=True),
        _scalar("encoder_output_lengths", I32),
        Tensor("embedding_bias", F32, (-1,), optional=True, ragged=True),
        _scalar("num_return_sequences", I32),
        _scalar("len_penalty", F32),
        _scalar("early_stopping", BOOL),
        _scalar("presence_penalty", F32),
        _scalar("frequency_penalty", F32),
        _scalar("return_log_probs", BOOL),
        _scalar("return_context_logits", BOOL),
        _scalar("return_generation_logits", BOOL),
        _scalar("stop", BOOL),
    )


def _trtllm_only_outputs(opts: TritonOptions) -> tuple[Tensor, ...]:
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


def tensorrt_llm_core(opts: TritonOptions, *, backend: str, parameters: dict[str, object]) -> ModelSpec:
    """The core generation model: C++ ``tensorrtllm`` backend, or our python model with the same interface."""
    full = backend == "tensorrtllm"
    return ModelSpec(
        name="tensorrt_llm",
        backend=backend,
        max_batch_size=opts.max_batch_size,
        decoupled=opts.decoupled,
        dynamic_batching=True,
        preferred_batch_size=opts.max_batch_size if full else None,
        max_queue_delay_microseconds=opts.max_queue_delay_microseconds,
        max_queue_size=opts.max_queue_size,
        inputs=CORE_INPUTS + (_trtllm_only_inputs(opts) if full else ()),
        outputs=CORE_OUTPUTS + (_trtllm_only_outputs(opts) if full else ()),
        instance_count=1 if full else opts.model_instance_count,
        parameters=parameters,
    )


def preprocessing(opts: TritonOptions, tokenizer_dir: str, max_input_len: int) -> ModelSpec:
    return ModelSpec(
        name="preprocessing",
        backend="python",
        max_batch_size=opts.max_batch_size,
        dynamic_batching=True,
        max_queue_delay_microseconds=opts.max_queue_delay_microseconds,
        max_queue_size=opts.max_queue_size,
        inputs=(
            Tensor("QUERY", BYTES, SCALAR),
            Tensor("REQUEST_OUTPUT_LEN", I32, SCALAR),
            Tensor("BAD_WORDS_DICT", BYTES, (-1,), optional=True),
            Tensor("STOP_WORDS_DICT", BYTES, (-1,), optional=True),
            Tensor("END_ID", I32, SCALAR, optional=True),
            Tensor("PAD_ID", I32, SCALAR, optional=True),
        ),
        outputs=(
            Tensor("INPUT_ID", I32, (-1,)),
            Tensor("REQUEST_INPUT_LEN", I32, SCALAR),
            Tensor("BAD_WORDS_IDS", I32, (2, -1)),
            Tensor("STOP_WORDS_IDS", I32, (2, -1)),
            Tensor("REQUEST_OUTPUT_LEN", I32, SCALAR),
            Tensor("OUT_END_ID", I32, SCALAR),
            Tensor("OUT_PAD_ID", I32, SCALAR),
        ),
        instance_count=opts.preprocessing_instance_count,
        parameters={"tokenizer_dir": tokenizer_dir, "add_special_tokens": opts.add_special_tokens,
                    "max_input_len": max_input_len},
    )


def postprocessing(opts: TritonOptions, tokenizer_dir: str) -> ModelSpec:
    return ModelSpec(
        name="postprocessing",
        backend="python",
        max_batch_size=opts.max_batch_size,
        dynamic_batching=True,
        max_queue_delay_microseconds=opts.max_queue_delay_microseconds,
        inputs=(Tensor("TOKENS_BATCH", I32, (-1, -1)), Tensor("SEQUENCE_LENGTH", I32, (-1,))),
        outputs=(Tensor("OUTPUT", BYTES, (-1,)),),
        instance_count=opts.postprocessing_instance_count,
        parameters={"tokenizer_dir": tokenizer_dir, "skip_special_tokens": opts.skip_special_tokens},
    )


def ensemble(opts: TritonOptions) -> ModelSpec:
    pre = EnsembleStep(
        "preprocessing",
        input_map={"QUERY": "text_input", "REQUEST_OUTPUT_LEN": "max_tokens", "BAD_WORDS_DICT": "bad_words",
                   "STOP_WORDS_DICT": "stop_words", "END_ID": "end_id", "PAD_ID": "pad_id"},
        output_map={"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_REQUEST_INPUT_LEN",
                    "BAD_WORDS_IDS": "_BAD_WORDS_IDS", "STOP_WORDS_IDS": "_STOP_WORDS_IDS",
                    "REQUEST_OUTPUT_LEN": "_REQUEST_OUTPUT_LEN", "OUT_END_ID": "_END_ID",
                    "OUT_PAD_ID": "_PAD_ID"},
    )
    core = EnsembleStep(
        "tensorrt_llm",
        input_map={"input_ids": "_INPUT_ID", "input_lengths": "_REQUEST_INPUT_LEN",
                   "request_output_len": "_REQUEST_OUTPUT_LEN", "end_id": "_END_ID", "pad_id": "_PAD_ID",
                   "bad_words_list": "_BAD_WORDS_IDS", "stop_words_list": "_STOP_WORDS_IDS",
                   "runtime_top_k": "top_k", "runtime_top_p": "top_p", "temperature": "temperature",
                   "repetition_penalty": "repetition_penalty", "min_tokens": "min_tokens", "seed": "seed",
                   "streaming": "stream"},
        output_map={"output_ids": "_TOKENS_BATCH", "sequence_length": "sequence_length"},
    )
    post = EnsembleStep(
        "postprocessing",
        input_map={"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "sequence_length"},
        output_map={"OUTPUT": "text_output"},
    )
    return ModelSpec(name="ensemble", platform="ensemble", max_batch_size=opts.max_batch_size,
                     inputs=ENSEMBLE_INPUTS, outputs=ENSEMBLE_OUTPUTS + ENSEMBLE_EXTRA_OUTPUTS,
                     steps=(pre, core, post))


def bls(opts: TritonOptions) -> ModelSpec:
    """Business-logic model: same request interface as the ensemble, calling the three models itself."""
    return ModelSpec(
        name="tensorrt_llm_bls",
        backend="python",
        max_batch_size=opts.max_batch_size,
        decoupled=opts.decoupled,
        inputs=tuple(Tensor(t.name, t.data_type, t.dims, optional=t.optional or t.name == "max_tokens")
                     for t in ENSEMBLE_INPUTS),
        outputs=ENSEMBLE_OUTPUTS,
        instance_count=opts.bls_instance_count,
        parameters={"default_max_tokens": opts.default_max_tokens, "logits_datatype": opts.logits_datatype},
    )


def llmapi(opts: TritonOptions) -> ModelSpec:
    """TensorRT-LLM's PyTorch-backend model (LLM API); batching/decoupling come from its model.yaml."""
    return ModelSpec(
        name="tensorrt_llm",
        backend="python",
        max_batch_size=0,
        inputs=(
            Tensor("text_input", BYTES, (-1,)),
            Tensor("streaming", BOOL, SCALAR, optional=True),
            Tensor("sampling_param_max_tokens", I32, SCALAR, optional=True),
            Tensor("sampling_param_temperature", F32, SCALAR, optional=True),
            Tensor("sampling_param_top_k", I32, SCALAR, optional=True),
            Tensor("sampling_param_top_p", F32, SCALAR, optional=True),
            Tensor("sampling_param_seed", U64, SCALAR, optional=True),
            Tensor("sampling_param_stop", BYTES, (-1,), optional=True),
            Tensor("sampling_param_exclude_input_from_output", BOOL, SCALAR, optional=True),
        ),
        outputs=(Tensor("text_output", BYTES, (-1,)), Tensor("finish_reason", BYTES, (-1,))),
        decoupled=opts.decoupled,
        instance_count=1,
    )
