"""What the upstream Triton models read and write, per TensorRT-LLM backend version family, as data.

The facts live in ``triton_backend/upstream/tensorrtllm_backend.yaml`` (each row cites the upstream file and tag
it was read from); this module loads them and adds *our* policy: which upstream inputs our python-backend models
honour, and the values of the others that mean "not used" (see :data:`NEUTRAL`). ``triton_backend.layout`` renders
the repository from it, ``triton_backend.conformance`` checks a rendered repository against it, and
``triton_backend.client`` maps its request fields through it.
"""

from __future__ import annotations

import functools
import re

from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError
from quant_common.facts import Fact, load_table
from triton_backend import engine_facts
from triton_backend.config_pbtxt import Tensor
from triton_backend.options import TritonOptions

TABLE = "tensorrtllm_backend.yaml"
BYTES, I32, F32, U64, BOOL = "TYPE_STRING", "TYPE_INT32", "TYPE_FP32", "TYPE_UINT64", "TYPE_BOOL"
SCALAR = (1,)
UPSTREAM_MODELS = ("ensemble", "tensorrt_llm", "tensorrt_llm_bls", "preprocessing", "postprocessing")


class TensorFact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    data_type: str
    dims: list[int]
    optional: bool = False
    reshape: list[int] | None = None
    ragged: bool = False
    template: str | None = None  # upstream's dtype is this ${...} template (filled from TritonOptions)


class ModelFact(Fact):
    inputs: list[TensorFact]
    outputs: list[TensorFact]
    routes: dict[str, tuple[str, str]] = {}  # ensemble input -> (step model, step input)


class ParameterFact(Fact):
    key: str


class SamplingFact(Fact):
    names: dict[str, str]  # our name (the in-tree backend's) -> the name this family reads


class Family(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    trtllm_min: str
    trtllm_below: str | None
    where: str
    sampling: SamplingFact
    required_parameters: list[ParameterFact]  # read by the C++ backend with no fallback: missing -> load fails
    models: dict[str, ModelFact]

    def input_name(self, ours: str) -> str:
        """This family's name for one of our sampling inputs (``seed`` -> ``random_seed`` before 0.20)."""
        return self.sampling.names.get(ours, ours)


class BackendTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    families: list[Family]


@functools.cache
def table() -> BackendTable:
    return load_table("triton_backend.upstream", TABLE, BackendTable)


def _version_key(version: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", version)[:3]
    if not parts:
        raise QuantError(f"{version!r} is not a TensorRT-LLM version", "give it as MAJOR.MINOR, e.g. 0.19 or 1.2.1")
    return tuple(int(p) for p in parts)


def family_names() -> list[str]:
    return [f.name for f in table().families]


def default_family() -> Family:
    """The newest family: TensorRT-LLM's in-tree backend (0.20 and later, 1.2.1 the newest with the engine path)."""
    return max(table().families, key=lambda f: _version_key(f.trtllm_min))


def family(name: str) -> Family:
    for fam in table().families:
        if fam.name == name:
            return fam
    raise QuantError(f"unknown TensorRT-LLM backend family {name!r}", f"choose one of {', '.join(family_names())}")


def family_for_version(version: str) -> Family:
    """The family whose range holds TensorRT-LLM ``version`` (``0.19.0``, ``1.2.1``, ``0.20.0rc3`` ...)."""
    key = _version_key(version)
    for fam in table().families:
        if _version_key(fam.trtllm_min) <= key and (fam.trtllm_below is None or key < _version_key(fam.trtllm_below)):
            return fam
    oldest = min(table().families, key=lambda f: _version_key(f.trtllm_min))
    raise QuantError(f"TensorRT-LLM {version} is older than every backend version this package knows "
                     f"(oldest: {oldest.trtllm_min})", f"use TensorRT-LLM {oldest.trtllm_min} or newer")


def tensors(facts: list[TensorFact], opts: TritonOptions) -> tuple[Tensor, ...]:
    """Upstream tensors as we render them: same name, dtype, dims, optionality, reshape; templates filled."""
    fill = {"logits_datatype": opts.logits_datatype or engine_facts.default_logits_datatype(),
            "encoder_input_features_data_type": opts.encoder_input_features_data_type,
            # the ensemble that feeds it declares this input TYPE_FP16 (no template there)
            "prompt_embedding_table_data_type": "TYPE_FP16"}
    return tuple(Tensor(t.name, fill.get(t.template or "", t.data_type), tuple(t.dims), optional=t.optional,
                        reshape=tuple(t.reshape) if t.reshape is not None else None, ragged=t.ragged)
                 for t in facts)


# --- our policy for the python-backend models -----------------------------------------------------------------
# Upstream inputs our models cannot honour may still be sent with the value that means "unused" (what upstream's
# clients send by default: beam_width 1, exclude flags false ...); any other value is refused with one line.
# Inputs not listed must be absent or empty. Beam-search-only knobs do nothing at beam_width 1 and are accepted.
NEUTRAL: dict[str, object] = {
    "beam_width": 1, "num_return_sequences": 1, "num_draft_tokens": 0, "use_draft_logits": False, "stop": False,
    "return_log_probs": False, "return_context_logits": False, "return_generation_logits": False,
    "return_perf_metrics": False, "return_kv_cache_reuse_stats": False, "return_num_input_tokens": False,
    "return_num_output_tokens": False, "presence_penalty": 0.0, "frequency_penalty": 0.0,
}
NO_EFFECT_AT_BEAM_1 = ("len_penalty", "length_penalty", "early_stopping", "beam_search_diversity_rate")

# Inputs our python models implement, by model (our names; sampling names are mapped per family).
HONOURED = {
    "tensorrt_llm": ("input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "stop_words_list",
                     "bad_words_list", "embedding_bias", "temperature", "runtime_top_k", "runtime_top_p",
                     "repetition_penalty", "min_tokens", "seed", "exclude_input_in_output", "streaming"),
    "preprocessing": ("QUERY", "REQUEST_OUTPUT_LEN", "BAD_WORDS_DICT", "STOP_WORDS_DICT", "EMBEDDING_BIAS_WORDS",
                      "EMBEDDING_BIAS_WEIGHTS", "END_ID", "PAD_ID"),
}

# Outputs of the core model that our python runtime fills; it declares all of upstream's (so the ensemble and BLS
# expose them as upstream does) and, like the C++ backend for an output whose return_* flag is off, leaves the
# others out of its responses. The flags that would ask for them are refused by name (NEUTRAL).
PRODUCED_BY_PYTHON_CORE = ("output_ids", "sequence_length")
TEXT_OUTPUT = "text_output"
# The ensemble also returns how many tokens each response carries (tokens/s without re-tokenizing text).
ENSEMBLE_EXTRA_OUTPUTS = (Tensor("sequence_length", I32, (-1,)),)


def unsupported_inputs(fam: Family, model: str) -> dict[str, object]:
    """For each upstream input of ``model`` our python model does not implement: its neutral value (None: must be
    absent or empty). Passed to the model as a JSON parameter, since it runs without this package."""
    honoured = {fam.input_name(n) for n in HONOURED.get(model, ())}
    out: dict[str, object] = {}
    for tensor in fam.models[model].inputs:
        if tensor.name in honoured or tensor.name in NO_EFFECT_AT_BEAM_1:
            continue
        out[tensor.name] = NEUTRAL.get(tensor.name)
    return out


def tensorrtllm_parameters(opts: TritonOptions, engine_dir: str, tokenizer_dir: str, fam: Family) -> dict[str, object]:
    """Parameters the C++ ``tensorrtllm`` backend reads (template names in comments where they differ).

    Every key the family reads without a fallback (``required_parameters``) is written: a missing one fails the
    model load ("Cannot find parameter with name: ..."). Guided decoding stays off: its backend and xgrammar info
    are empty, which the backend reads as "disabled".
    """
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
    known = {"tokenizer_dir": tokenizer_dir, "guided_decoding_backend": "", "xgrammar_tokenizer_info_path": ""}
    for required in fam.required_parameters:
        if required.key not in params:
            if required.key not in known:
                raise QuantError(f"TensorRT-LLM backend {fam.name} requires parameter {required.key!r}, which this "
                                 "package does not know how to fill", "report it; use another --trtllm-version")
            params[required.key] = known[required.key]
    return params


# --- what a client sends: request field -> input name, per model interface ------------------------------------
def ensemble_request(fam: Family) -> dict[str, str]:
    return {"max_tokens": "max_tokens", "stream": "stream", "temperature": "temperature", "top_k": "top_k",
            "top_p": "top_p", "seed": fam.input_name("seed"), "stop_words": "stop_words", "bad_words": "bad_words"}


def family_of_inputs(inputs: set[str]) -> Family:
    """The family whose ensemble names match a served model's inputs (``random_seed`` vs ``seed``)."""
    for fam in sorted(table().families, key=lambda f: _version_key(f.trtllm_min), reverse=True):
        if fam.input_name("seed") in inputs:
            return fam
    return default_family()


LLMAPI_REQUEST = {"max_tokens": "sampling_param_max_tokens", "stream": "streaming",
                  "temperature": "sampling_param_temperature", "top_k": "sampling_param_top_k",
                  "top_p": "sampling_param_top_p", "seed": "sampling_param_seed", "stop_words": "sampling_param_stop"}
REQUEST_NUMPY_TYPES = {"max_tokens": "int32", "top_k": "int32", "temperature": "float32", "top_p": "float32",
                       "seed": "uint64", "stream": "bool"}

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
