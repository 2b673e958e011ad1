"""The models of an ``inflight_batcher_llm``-shaped repository, as :class:`ModelSpec` data (our templates).

Tensor names and parameters come from ``triton_backend.interface`` (the TensorRT-LLM backend's interface), so the
same ensemble, preprocessing, postprocessing and BLS models drive either the C++ ``tensorrtllm`` backend or our
python-backend ``tensorrt_llm`` model (the embedded PyTorch runtime).
"""

from __future__ import annotations

import json

from triton_backend.config_pbtxt import EnsembleStep, ModelSpec
from triton_backend.interface import (
    ENSEMBLE_EXTRA_OUTPUTS,
    LLMAPI_INPUTS,
    LLMAPI_OUTPUTS,
    TEXT_OUTPUT,
    Family,
    tensors,
    unsupported_inputs,
)
from triton_backend.options import TritonOptions

# Our preprocessing's outputs, as the core model's inputs (the ensemble's internal tensors).
PRE_TO_CORE = {"INPUT_ID": "input_ids", "REQUEST_INPUT_LEN": "input_lengths",
               "REQUEST_OUTPUT_LEN": "request_output_len", "BAD_WORDS_IDS": "bad_words_list",
               "STOP_WORDS_IDS": "stop_words_list", "EMBEDDING_BIAS": "embedding_bias", "OUT_END_ID": "end_id",
               "OUT_PAD_ID": "pad_id"}


def passed_through(fam: Family, model: str) -> list[str]:
    """Outputs of upstream's ``model`` (ensemble or BLS) that upstream takes from the core model's output of the
    same name (log-probs, logits, indices, KV-cache and timing figures): everything but the text."""
    core = {t.name for t in fam.models["tensorrt_llm"].outputs}
    return [t.name for t in fam.models[model].outputs if t.name != TEXT_OUTPUT and t.name in core]


def _json(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def tensorrt_llm_core(opts: TritonOptions, fam: Family, *, backend: str, parameters: dict[str, object]) -> ModelSpec:
    """The core generation model: C++ ``tensorrtllm`` backend, or our python model with the same inputs.

    Both declare every input upstream's ``tensorrt_llm`` of ``fam`` declares; the python model refuses, per
    request, the ones it cannot honour when set (their names and neutral values travel as parameters).
    """
    full = backend == "tensorrtllm"
    upstream = fam.models["tensorrt_llm"]
    if not full:
        parameters = {**parameters, "input_names": _json(fam.sampling.names),
                      "unsupported_inputs": _json(unsupported_inputs(fam, "tensorrt_llm"))}
    return ModelSpec(
        name="tensorrt_llm",
        backend=backend,
        max_batch_size=opts.max_batch_size,
        decoupled=opts.decoupled,
        dynamic_batching=True,
        preferred_batch_size=opts.max_batch_size if full else None,
        max_queue_delay_microseconds=opts.max_queue_delay_microseconds,
        max_queue_size=opts.max_queue_size,
        inputs=tensors(upstream.inputs, opts),
        outputs=tensors(upstream.outputs, opts),  # the python runtime leaves out what it cannot fill
        instance_count=1 if full else opts.model_instance_count,
        parameters=parameters,
    )


def preprocessing(opts: TritonOptions, fam: Family, tokenizer_dir: str, max_input_len: int,
                  vocab_size: int | None = None) -> ModelSpec:
    outputs = {t.name: t for t in tensors(fam.models["preprocessing"].outputs, opts)}
    return ModelSpec(
        name="preprocessing",
        backend="python",
        max_batch_size=opts.max_batch_size,
        dynamic_batching=True,
        max_queue_delay_microseconds=opts.max_queue_delay_microseconds,
        max_queue_size=opts.max_queue_size,
        inputs=tensors(fam.models["preprocessing"].inputs, opts),
        outputs=tuple(outputs[name] for name in PRE_TO_CORE),  # the ones we produce, as upstream declares them
        instance_count=opts.preprocessing_instance_count,
        parameters={"tokenizer_dir": tokenizer_dir, "add_special_tokens": opts.add_special_tokens,
                    "max_input_len": max_input_len, "vocab_size": vocab_size or 0,  # embedding_bias row length
                    "unsupported_inputs": _json(unsupported_inputs(fam, "preprocessing"))},
    )


def postprocessing(opts: TritonOptions, fam: Family, tokenizer_dir: str) -> ModelSpec:
    return ModelSpec(
        name="postprocessing",
        backend="python",
        max_batch_size=opts.max_batch_size,
        dynamic_batching=True,
        max_queue_delay_microseconds=opts.max_queue_delay_microseconds,
        inputs=tensors(fam.models["postprocessing"].inputs, opts),
        outputs=tensors(fam.models["postprocessing"].outputs, opts),
        instance_count=opts.postprocessing_instance_count,
        parameters={"tokenizer_dir": tokenizer_dir, "skip_special_tokens": opts.skip_special_tokens},
    )


def ensemble(opts: TritonOptions, fam: Family) -> ModelSpec:
    """Upstream's ensemble inputs, each routed to the step input upstream routes it to."""
    upstream = fam.models["ensemble"]
    to_pre = {step_input: name for name, (model, step_input) in upstream.routes.items() if model == "preprocessing"}
    to_core = {step_input: name for name, (model, step_input) in upstream.routes.items() if model == "tensorrt_llm"}
    pre = EnsembleStep("preprocessing", input_map=to_pre,
                       output_map={out: f"_{out}" for out in PRE_TO_CORE})
    through = passed_through(fam, "ensemble")
    core = EnsembleStep(
        "tensorrt_llm",
        input_map={**{core_input: f"_{out}" for out, core_input in PRE_TO_CORE.items()}, **to_core},
        output_map={"output_ids": "_TOKENS_BATCH", "sequence_length": "sequence_length",
                    **{name: name for name in through}},
    )
    post = EnsembleStep(
        "postprocessing",
        input_map={"TOKENS_BATCH": "_TOKENS_BATCH", "SEQUENCE_LENGTH": "sequence_length"},
        output_map={"OUTPUT": TEXT_OUTPUT},
    )
    # Upstream's outputs, routed as upstream routes them: the core's log-probs/logits/... reach the client whenever
    # the core returns them (a step that leaves one out simply omits it from the ensemble's response).
    outputs = tuple(t for t in tensors(upstream.outputs, opts) if t.name == TEXT_OUTPUT or t.name in through)
    return ModelSpec(name="ensemble", platform="ensemble", max_batch_size=opts.max_batch_size,
                     inputs=tensors(upstream.inputs, opts), outputs=outputs + ENSEMBLE_EXTRA_OUTPUTS,
                     steps=(pre, core, post))


def bls(opts: TritonOptions, fam: Family) -> ModelSpec:
    """Business-logic model: upstream's BLS inputs, forwarded as the ensemble routes them."""
    upstream = fam.models["tensorrt_llm_bls"]
    routes = fam.models["ensemble"].routes
    names = [t.name for t in upstream.inputs]
    neutral = {name: value for name, value in unsupported_inputs(fam, "tensorrt_llm_bls").items() if name not in routes}
    return ModelSpec(
        name="tensorrt_llm_bls",
        backend="python",
        max_batch_size=opts.max_batch_size,
        decoupled=opts.decoupled,
        inputs=tensors(upstream.inputs, opts),
        outputs=tuple(t for t in tensors(upstream.outputs, opts)
                      if t.name == TEXT_OUTPUT or t.name in passed_through(fam, "tensorrt_llm_bls")),
        instance_count=opts.bls_instance_count,
        parameters={"default_max_tokens": opts.default_max_tokens, "logits_datatype": opts.logits_datatype,
                    "routes": _json({name: list(routes[name]) for name in names if name in routes}),
                    "pre_to_core": _json(PRE_TO_CORE), "unsupported_inputs": _json(neutral),
                    "passed_through": _json(passed_through(fam, "tensorrt_llm_bls"))},
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
