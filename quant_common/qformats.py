"""The one table of LLM quantization formats: every ``--qformat`` and ``--kv-cache-dtype`` is one row here.

Config types (``llm_quant.config``), CLI help and checks (``llm_quant.cli.build``), the modelopt config
(``llm_quant.calibration.calibrate``), the expected exported algorithms
(``llm_quant.upstream.expected_algorithms``), the checkpoint conformance checks (``llm_quant.export.verify``) and
the LLM API's support rules (``triton_backend.llmapi_support``) are all derived from these rows, so adding a
format is one row plus its tests. It sits in ``quant_common`` so that ``triton_backend`` reads it without
importing ``llm_quant`` (which sits above).

Where the values come from:
- names: TensorRT-LLM's ``examples/quantization/quantize.py --qformat/--kv_cache_dtype`` (v1.2);
- ``modelopt_cfg``: attributes of ``modelopt.torch.quantization`` (nvidia-modelopt 0.37-0.47 ``config.py``);
- ``quant_algo`` / ``kv_cache_quant_algo``: TensorRT-LLM ``QuantAlgo`` names as modelopt's
  ``export_tensorrt_llm_checkpoint`` writes them into ``config.json`` (checked with nvidia-modelopt 0.47);
- ``checkpoint``: the dtype and scale tensors each quantized linear carries in ``rank{N}.safetensors``, as
  TensorRT-LLM's loaders read them (``weights_scaling_factor``, ``activation_scaling_factor``,
  ``prequant_scaling_factor``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quant_common.errors import QuantError


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointTensors(_Row):
    """What every quantized linear of a TensorRT-LLM checkpoint holds for one ``quant_algo``."""

    weight_dtype: str = Field(description="safetensors dtype of the quantized weight; 'model': the checkpoint dtype")
    scales: tuple[str, ...] = Field(description="scale tensors beside it ('<linear>.<scale>')")


class QFormat(_Row):
    """One ``--qformat``."""

    name: str
    modelopt_cfg: str | None = Field(description="modelopt.torch.quantization attribute; None: full precision")
    quant_algo: str | None = Field(description="TensorRT-LLM checkpoint quantization.quant_algo modelopt exports")
    checkpoint: CheckpointTensors | None = Field(default=None, description="tensors checked in the exported checkpoint")
    needs_cuda: bool = Field(default=False, description="modelopt's kernels for it are GPU-only")
    int4_blocks: bool = Field(default=False, description="INT4 weight blocks: the group size is fitted to the model")
    smoothquant: bool = Field(default=False, description="takes --smoothquant-alpha (the SmoothQuant algorithm)")

    @property
    def quantized(self) -> bool:
        return self.modelopt_cfg is not None


class KVFormat(_Row):
    """One ``--kv-cache-dtype``: quantizer entries appended to the qformat's modelopt ``quant_cfg`` list."""

    name: str
    kv_cache_quant_algo: str = Field(description="TensorRT-LLM checkpoint quantization.kv_cache_quant_algo")
    modelopt_cfg: str | None = Field(default=None, description="modelopt attribute whose quant_cfg entries are appended")
    quant_cfg: tuple[dict[str, Any], ...] = Field(default=(), description="explicit quant_cfg entries to append")
    hf_checkpoint: bool = Field(default=True, description="modelopt's export_hf_checkpoint can write this KV cache")


_INT8_WEIGHTS = CheckpointTensors(weight_dtype="int8", scales=("weights_scaling_factor",))

QFORMAT_ROWS: tuple[QFormat, ...] = (
    QFormat(name="int8_sq", modelopt_cfg="INT8_SMOOTHQUANT_CFG", quant_algo="W8A8_SQ_PER_CHANNEL", smoothquant=True,
            checkpoint=CheckpointTensors(weight_dtype="int8", scales=(
                "weights_scaling_factor", "activation_scaling_factor", "prequant_scaling_factor"))),
    QFormat(name="fp8", modelopt_cfg="FP8_DEFAULT_CFG", quant_algo="FP8",
            checkpoint=CheckpointTensors(weight_dtype="float8_e4m3fn",
                                         scales=("weights_scaling_factor", "activation_scaling_factor"))),
    # INT4 weights are packed two per int8; the AWQ pre-quant scales are checked when config.json says
    # pre_quant_scale (llm_quant.export.verify).
    QFormat(name="int4_awq", modelopt_cfg="INT4_AWQ_CFG", quant_algo="W4A16_AWQ", int4_blocks=True,
            checkpoint=_INT8_WEIGHTS),
    QFormat(name="w4a8_awq", modelopt_cfg="W4A8_AWQ_BETA_CFG", quant_algo="W4A8_AWQ", int4_blocks=True,
            checkpoint=_INT8_WEIGHTS),
    # TensorRT-LLM quantizes W8A16 weights itself while loading and skips weights that are already int8, so the
    # checkpoint carries them unquantized (llm_quant/upstream/trtllm_loader.yaml); the embedded runtime keeps
    # modelopt's INT8 weight-only model.
    QFormat(name="int8_wo", modelopt_cfg="INT8_WEIGHT_ONLY_CFG", quant_algo="W8A16",
            checkpoint=CheckpointTensors(weight_dtype="model", scales=())),
    # modelopt exports INT4 weight-only as W4A16_AWQ without pre-quant scales (llm_quant.export.checkpoints
    # corrects the flag), which TensorRT-LLM loads as group-wise INT4 with pre_quant_scale false. (TensorRT-LLM's
    # own flow labels int4_wo W4A16: per-channel INT4 it quantizes itself, another quantization than modelopt's
    # blocks that the embedded runtime runs.)
    QFormat(name="int4_wo", modelopt_cfg="INT4_BLOCKWISE_WEIGHT_ONLY_CFG", quant_algo="W4A16_AWQ", int4_blocks=True,
            checkpoint=_INT8_WEIGHTS),
    QFormat(name="nvfp4", modelopt_cfg="NVFP4_DEFAULT_CFG", quant_algo="NVFP4", needs_cuda=True),
    QFormat(name="full_prec", modelopt_cfg=None, quant_algo=None),
)

KV_ROWS: tuple[KVFormat, ...] = (
    KVFormat(name="fp8", kv_cache_quant_algo="FP8", modelopt_cfg="FP8_KV_CFG"),
    # modelopt has no INT8 KV preset: 8-bit per-tensor K/V output quantizers (TensorRT-LLM's INT8 KV cache).
    # The HF checkpoint cannot carry it: nvidia-modelopt 0.47 export_hf_checkpoint asserts "Invalid KV cache
    # quantization format" (modelopt/torch/export/quant_utils.py:1119).
    KVFormat(name="int8", kv_cache_quant_algo="INT8", hf_checkpoint=False,
             quant_cfg=({"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": 8, "axis": None}},)),
)

QFORMATS: dict[str, QFormat] = {row.name: row for row in QFORMAT_ROWS}
KV_FORMATS: dict[str, KVFormat] = {row.name: row for row in KV_ROWS}
QFORMAT_NAMES: tuple[str, ...] = tuple(QFORMATS)
KV_NAMES: tuple[str, ...] = tuple(KV_FORMATS)
DEFAULT_QFORMAT = "int8_sq"


def _checkpoint_table() -> dict[str, CheckpointTensors]:
    """quant_algo -> checkpoint tensors; formats sharing a quant_algo must agree (checked at import)."""
    table: dict[str, CheckpointTensors] = {}
    for row in QFORMAT_ROWS:
        if row.quant_algo is None or row.checkpoint is None:
            continue
        if table.setdefault(row.quant_algo, row.checkpoint) != row.checkpoint:
            raise AssertionError(f"qformat {row.name}: quant_algo {row.quant_algo} checked two ways")
    return table


CHECKPOINT_TENSORS: dict[str, CheckpointTensors] = _checkpoint_table()


def either(names: tuple[str, ...] | list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def qformat(name: str) -> QFormat:
    if name not in QFORMATS:
        raise QuantError(f"unknown qformat {name!r}", f"choose one of {', '.join(QFORMATS)}")
    return QFORMATS[name]


def kv_format(name: str) -> KVFormat:
    if name not in KV_FORMATS:
        raise QuantError(f"unknown --kv-cache-dtype {name!r}", f"choose {either(KV_NAMES)}")
    return KV_FORMATS[name]


def cpu_alternatives(*, int4_blocks: bool = True) -> str:
    """Quantized formats that run on a CPU (for 'choose ...' hints)."""
    return either([r.name for r in QFORMAT_ROWS
                   if r.quantized and not r.needs_cuda and (int4_blocks or not r.int4_blocks)])


def qformat_help() -> str:
    return ", ".join(f"{r.name} (GPU)" if r.needs_cuda else r.name for r in QFORMAT_ROWS)


def kv_help() -> str:
    return f"{either(KV_NAMES)} KV cache"
