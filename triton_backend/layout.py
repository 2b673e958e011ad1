"""The models of an ``inflight_batcher_llm``-shaped repository, as :class:`ModelSpec` data (our templates).

Tensor names and parameters come from ``triton_backend.interface`` (the TensorRT-LLM backend's interface), so the
same ensemble, preprocessing, postprocessing and BLS models drive either the C++ ``tensorrtllm`` backend or our
python-backend ``tensorrt_llm`` model (the embedded PyTorch runtime).
"""

from __future__ import annotations

from triton_backend.config_pbtxt import EnsembleStep, ModelSpec, Tensor
from triton_backend.interface import (
    BYTES,
    CORE_INPUTS,
    CORE_OUTPUTS,
    ENSEMBLE_EXTRA_OUTPUTS,
    ENSEMBLE_INPUTS,
    ENSEMBLE_OUTPUTS,
    I32,
    LLMAPI_INPUTS,
    LLMAPI_OUTPUTS,
    SCALAR,
    trtllm_only_inputs,
    trtllm_only_outputs,
)
from triton_backend.options import TritonOptions


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
        inputs=CORE_INPUTS + (trtllm_only_inputs(opts) if full else ()),
        outputs=CORE_OUTPUTS + (trtllm_only_outputs(opts) if full else ()),
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
    # Upstream: max_batch_size and decoupled are "specific in model.yaml. Please don't add it in config.pbtxt"
    # (tensorrtllm_backend v0.19.0 all_models/llmapi/tensorrt_llm/config.pbtxt:31-37): model.py's
    # auto_complete_config sets them from model.yaml's triton_config.
    return ModelSpec(
        name="tensorrt_llm",
        backend="python",
        max_batch_size=None,
        inputs=LLMAPI_INPUTS,
        outputs=LLMAPI_OUTPUTS,
        instance_count=1,
    )
