"""Typed configuration of an LLM build: a preset (YAML in configs/llm/) plus the command-line choices."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llm_quant.upstream import expected_algorithms
from quant_common.qformats import DEFAULT_QFORMAT, KV_NAMES, QFORMAT_NAMES
from triton_backend.executor import engine_batching_problem
from triton_backend.llmapi_support import runs_quant_algo, unsupported_message
from triton_backend.options import RuntimeChoice, TritonOptions

if TYPE_CHECKING:
    QFormat = str
    KVCacheDType = str
else:  # Literal types built from quant_common.qformats: pydantic lists the choices in its errors and JSON schema
    QFormat = Literal[QFORMAT_NAMES]
    KVCacheDType = Literal[KV_NAMES]
CheckpointDType = Literal["float16", "bfloat16", "float32"]
# int8_sq activation quantization: static per-tensor scale (modelopt's INT8_SMOOTHQUANT_CFG) or dynamic per token
# (llm_quant.calibration.per_token); the default is chosen from measurements (README, "SmoothQuant activations").
SqActivations = Literal["per_tensor", "per_token"]
DEFAULT_SQ_ACTIVATIONS: SqActivations = "per_token"
Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = get_args(Device)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibConfig(_Strict):
    dataset: str = Field("mixed", description="'mixed' or 'pydoc' (offline), a hub dataset name, or local files")
    files: list[Path] = Field(default_factory=list, description="local calibration files (override dataset)")
    size: int = Field(32, ge=1, description="number of calibration sequences")
    seq_len: int = Field(256, ge=8, description="tokens per calibration sequence")
    batch_size: int = Field(4, ge=1)


class EvalConfig(_Strict):
    seq_len: int = Field(512, ge=8, description="perplexity window length")
    max_tokens: int = Field(8192, ge=8, description="held-out tokens evaluated")


class ParallelConfig(_Strict):
    tp_size: int = Field(1, ge=1)
    pp_size: int = Field(1, ge=1)


class TrtllmBuildOptions(_Strict):
    max_batch_size: int = Field(8, ge=1)
    max_input_len: int = Field(1024, ge=1)
    max_seq_len: int = Field(2048, ge=2)
    max_num_tokens: int = Field(8192, ge=1)
    max_beam_width: int = Field(1, ge=1)
    gemm_plugin: str = "auto"
    gpt_attention_plugin: str = "auto"
    kv_cache_type: Literal["paged", "continuous", "disabled"] = "paged"


class Preset(_Strict):
    name: str
    description: str = ""
    source: str = Field(description="default model: package:<pkg>/<file.gguf>, a hub id, or a folder")
    decoder_type: str = Field(description="modelopt/TensorRT-LLM decoder type (llama, qwen, gemma, ...)")
    model_types: list[str] = Field(description="HF config model_type values this preset accepts")
    # auto: the model's own torch_dtype when float16/bfloat16, else float16 (TensorRT-LLM's --dtype auto rule)
    dtype: CheckpointDType | Literal["auto"] = "auto"
    sq_activations: SqActivations = Field(DEFAULT_SQ_ACTIVATIONS, description="int8_sq activation quantization")
    # on by default: SmolLM2 per-token +1.24 % / -0.05 % (eval split / prose) vs +1.44 % / +0.13 % with alpha 0.5,
    # for ~15 % more calibration time (README "SmoothQuant activations")
    sq_alpha_search: bool = Field(True, description="int8_sq: search the SmoothQuant alpha per layer")
    calibration: CalibConfig = Field(default_factory=CalibConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    trtllm_build: TrtllmBuildOptions = Field(default_factory=TrtllmBuildOptions)
    # Typed, so a bad Triton option fails when the preset is loaded, not after calibration.
    triton: TritonOptions = Field(default_factory=TritonOptions)

    @model_validator(mode="after")
    def _engine_loads_with_its_batching(self) -> Preset:
        # The executor refuses the pair only when Triton loads the engine: refuse it when the preset is read.
        problem = engine_batching_problem(self.trtllm_build.kv_cache_type, self.trtllm_build.gpt_attention_plugin,
                                          self.triton.batching_strategy)
        if problem:
            raise ValueError(problem)
        # The engine enforces the trtllm-build limits; a Triton limit above them lets preprocessing pass prompts
        # the executor rejects (triton_backend.repository takes the engine's limits otherwise).
        for name in ("max_input_len", "max_seq_len"):
            triton, engine = getattr(self.triton, name), getattr(self.trtllm_build, name)
            if triton is not None and triton > engine:
                raise ValueError(f"triton.{name} {triton} is above trtllm_build.{name} {engine}, the engine's limit: "
                                 f"lower it or raise trtllm_build.{name}")
        return self


class BuildConfig(_Strict):
    """Everything ``build`` needs; the CLI fills it from the preset and the flags."""

    preset: Preset
    model_path: Path | None = Field(None, description="local HF folder or hub id replacing the preset source")
    qformat: QFormat = DEFAULT_QFORMAT
    kv_cache_dtype: KVCacheDType | None = None
    smoothquant_alpha: float | None = Field(None, gt=0.0, le=1.0)
    sq_activations: SqActivations = DEFAULT_SQ_ACTIVATIONS
    sq_alpha_search: bool = Field(True, description="search the SmoothQuant alpha per layer (no --smoothquant-alpha)")
    accuracy_budget: float | None = Field(None, gt=0.0, description="max perplexity increase in percent")
    # a linear set meets the budget when the upper end of its search-split change's 95 % interval does ("ci"), or
    # the measured change does ("point"; quant_common.search.BUDGET_RULES)
    budget_rule: Literal["ci", "point"] = "ci"
    # also calibrate on this many seeded half-subsets of the calibration samples and report each quantizer's amax
    # spread (0: off; quant_common.stability)
    calib_stability: int = Field(0, ge=0)
    stability_threshold: float = Field(0.1, gt=0.0)
    calibration: CalibConfig
    eval: EvalConfig
    parallel: ParallelConfig
    dtype: CheckpointDType
    device: Device = "auto"
    out: Path = Path("out/llm")
    build_engine: bool = True
    # TensorRT-LLM the trtllm-build argv is rendered for when none is installed (llm_quant.upstream.target_version)
    trtllm_version: str | None = None
    triton_runtime: RuntimeChoice = "auto"
    # the Hugging Face (unified) checkpoint beside the TensorRT-LLM one: what TensorRT-LLM's PyTorch backend
    # (trtllm-serve, the llmapi Triton runtime), vLLM and SGLang load. Off: one checkpoint written, as modelopt's
    # own TensorRT-LLM flow does (an 8B fp8 build then writes 8 GB instead of 16 GB).
    hf_checkpoint: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _stability_needs_two_subsets(self) -> BuildConfig:
        if self.calib_stability == 1:
            raise ValueError("--calib-stability 1: one calibration subset shows no spread; pass 0 (off) or >= 2")
        return self

    @model_validator(mode="after")
    def _llmapi_needs_the_hf_checkpoint(self) -> BuildConfig:
        if self.triton_runtime == "llmapi" and not self.hf_checkpoint:
            raise ValueError("--triton-runtime llmapi serves the HF checkpoint, which --no-hf-checkpoint leaves out: "
                             "drop one of them")
        return self

    @model_validator(mode="after")
    def _llmapi_runs_the_qformat(self) -> BuildConfig:
        # TensorRT-LLM's PyTorch backend would only fail inside Triton, after calibration and export.
        algo = expected_algorithms(self.qformat, None, self.sq_activations)[0]
        if self.triton_runtime == "llmapi" and not runs_quant_algo(algo):
            raise ValueError(unsupported_message(f"qformat {self.qformat}", str(algo)))
        return self
