"""Before minutes of calibration: can the visible GPU run this qformat and KV cache, and does the model fit?

Every rule comes from ``llm_quant/upstream/gpu_requirements.yaml``: the compute capability (SM) TensorRT-LLM needs
for each format and the SM range on which its engine builder refuses it, each row citing the upstream file it was
read from. The memory check sizes the model from its safetensors headers (no weights are read) at the dtype it will
be loaded in. Problems are one ``QuantError`` line naming the problem and an alternative; nothing is written.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from quant_common import qformats
from quant_common.errors import QuantError, require
from quant_common.facts import Fact, load_table

TABLE = "gpu_requirements.yaml"
GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Share of free GPU memory the weights may take: calibration also holds activations, modelopt's quantizer state and
# the CUDA context (measured: an 8B-shaped bf16 model, 15 GB of weights, peaked at 19.2 GB during an fp8 build).
WEIGHT_SHARE = 0.8


SM_RANGE = range(70, 131)  # Volta (the oldest GPU TensorRT-LLM supported) .. room for the next architecture


class GpuRule(Fact):
    """One fact per row: a name may have a ``min_sm`` row and a ``refused_sm`` row, each with its own source."""

    name: str  # a --qformat name or kv:<--kv-cache-dtype>
    min_sm: int | None = None  # major*10+minor; below it TensorRT-LLM has no kernels for the format
    refused_sm: tuple[int, int] | None = None  # [lo, hi): TensorRT-LLM's engine builder raises there
    releases: str
    upstream_message: str

    @field_validator("min_sm")
    @classmethod
    def _min_in_range(cls, value: int | None) -> int | None:
        if value is not None and value not in SM_RANGE:
            raise ValueError(f"min_sm {value} is not an SM version between 70 and 130")
        return value

    @field_validator("refused_sm")
    @classmethod
    def _half_open(cls, value: tuple[int, int] | None) -> tuple[int, int] | None:
        if value is not None and not (value[0] in SM_RANGE and value[1] in SM_RANGE and value[0] < value[1]):
            raise ValueError(f"refused_sm {list(value)} is not a half-open [lo, hi) range of SM versions")
        return value


class CheckpointDtypeAuto(Fact):
    keeps: list[str]  # model dtypes (config.json torch_dtype) the checkpoint keeps
    otherwise: str  # float32 or unset


class GpuRequirements(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: list[GpuRule]
    checkpoint_dtype_auto: CheckpointDtypeAuto

    def rules_for(self, name: str) -> list[GpuRule]:
        return [rule for rule in self.rules if rule.name == name]


def requirements() -> GpuRequirements:
    return load_table("llm_quant.upstream", TABLE, GpuRequirements)


def model_dtype(model_dir: Path) -> str | None:
    """The dtype the checkpoint was saved in (``torch_dtype``; transformers 5 writes ``dtype``)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("torch_dtype") or config.get("dtype")
    return str(value) if value else None


def checkpoint_dtype(model_dir: Path) -> str:
    """TensorRT-LLM's ``--dtype auto``: the model's own dtype when it is float16/bfloat16, else float16."""
    rule = requirements().checkpoint_dtype_auto
    dtype = model_dtype(model_dir)
    return dtype if dtype in rule.keeps else rule.otherwise


def sm_version(capability: tuple[int, int]) -> int:
    return capability[0] * 10 + capability[1]


def format_problem(name: str, sm: int) -> GpuRule | None:
    """The first rule ``name`` breaks on SM ``sm`` (None: TensorRT-LLM runs it there)."""
    for rule in requirements().rules_for(name):
        if rule.min_sm is not None and sm < rule.min_sm:
            return rule
        if rule.refused_sm is not None and rule.refused_sm[0] <= sm < rule.refused_sm[1]:
            return rule
    return None


def runnable_qformats(sm: int) -> list[str]:
    return [row.name for row in qformats.QFORMAT_ROWS if row.quantized and format_problem(row.name, sm) is None]


def check_formats(qformat: str, kv_cache_dtype: str | None, sm: int, gpu: str) -> None:
    """One line when TensorRT-LLM cannot run ``qformat`` / the KV cache on an SM ``sm`` GPU."""
    for name, flag in ((qformat, f"--qformat {qformat}"), (f"kv:{kv_cache_dtype}", f"--kv-cache-dtype "
                                                                               f"{kv_cache_dtype}")):
        if name == "kv:None":
            continue
        rule = format_problem(name, sm)
        if rule is None:
            continue
        need = (f"SM {rule.min_sm / 10:.1f} or newer" if rule.min_sm is not None and sm < rule.min_sm
                else f"an SM outside {rule.refused_sm[0] / 10:.1f}-{rule.refused_sm[1] / 10:.1f}"
                if rule.refused_sm else "another GPU")
        alternatives = runnable_qformats(sm) if name == qformat else [
            kv for kv in qformats.KV_NAMES if format_problem(f"kv:{kv}", sm) is None]
        fix = (f"choose {qformats.either(alternatives)}" if alternatives else "use another GPU") + \
              " on this GPU, or build on a GPU that runs it"
        raise QuantError(f"{flag} needs {need} ({rule.upstream_message!r}: {rule.source.cite()}); "
                         f"this GPU is {gpu} (SM {sm / 10:.1f})", fix)


def weight_bytes(model_dir: Path, dtype: str) -> int:
    """Bytes the model's weights take at ``dtype``, from the safetensors headers alone (no tensor is read)."""
    numel = 0
    shards = sorted(Path(model_dir).glob("*.safetensors"))
    if not shards:
        raise QuantError(f"{model_dir} holds no *.safetensors weights", "pass a Hugging Face checkpoint folder")
    for shard in shards:
        try:
            with shard.open("rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
        except (OSError, ValueError, struct.error) as exc:
            raise QuantError(f"{shard} is not a readable safetensors file ({exc.__class__.__name__})",
                             "re-download or re-save the checkpoint") from exc
        for key, entry in header.items():
            if key != "__metadata__":
                count = 1
                for dim in entry.get("shape", []):
                    count *= int(dim)
                numel += count
    return numel * DTYPE_BYTES[dtype]


@dataclass
class PreflightReport:
    device: str
    gpu: str | None = None
    sm: int | None = None
    gpus: int = 0
    free_gib: float | None = None
    weights_gib: float | None = None
    load_dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_memory(weights: int, free: int, *, dtype: str, gpus: int) -> None:
    if weights > WEIGHT_SHARE * free:
        where = f"{gpus} GPUs" if gpus > 1 else "the GPU"
        raise QuantError(f"the model needs {weights / GIB:.1f} GiB at {dtype} and {where} has {free / GIB:.1f} GiB "
                         f"free (calibration needs room beyond the weights: at most {WEIGHT_SHARE:.0%} of it)",
                         "free GPU memory, use a machine with more GPU memory (several GPUs are spread over "
                         "automatically), or --device cpu")


def preflight(model_dir: Path, qformat: str, kv_cache_dtype: str | None, *, device: str, load_dtype: str
              ) -> PreflightReport:
    """Every check that needs only the model folder and the visible GPUs; runs before any weight is loaded."""
    if device != "cuda":
        return PreflightReport(device=device)
    torch = require("torch", purpose="the GPU checks")
    gpus = int(torch.cuda.device_count())
    props = torch.cuda.get_device_properties(0)
    sm = sm_version((props.major, props.minor))
    check_formats(qformat, kv_cache_dtype, sm, props.name)
    free = sum(int(torch.cuda.mem_get_info(i)[0]) for i in range(gpus))
    weights = weight_bytes(model_dir, load_dtype)
    check_memory(weights, free, dtype=load_dtype, gpus=gpus)
    return PreflightReport(device=device, gpu=props.name, sm=sm, gpus=gpus, free_gib=round(free / GIB, 2),
                           weights_gib=round(weights / GIB, 3), load_dtype=load_dtype)
