"""The vision repository's config.pbtxt files: rendered with ``triton_backend.config_pbtxt`` plus the blocks it
does not model (several preferred batch sizes, a GPU instance group, an execution accelerator), then parsed with
``model_config_pb2`` before anything is written.

What each Triton backend is called and which parameters it reads is a cited table (``triton_detectors.yaml``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from quant_common.atomic import atomic_write_text
from quant_common.facts import Fact, load_table
from triton_backend import config_pbtxt
from triton_backend.config_pbtxt import ModelSpec

DetectorKind = Literal["python", "tensorrt", "onnxruntime", "onnxruntime_trt", "openvino"]


class Accelerator(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    parameters: dict[str, str] = {}


class DetectorFact(Fact):
    platform: str | None = None
    backend: str | None = None
    model_file: str
    default_model_filename: str | None = None  # where the backend's default file name is not model_file's
    instance_kind: Literal["KIND_CPU", "KIND_GPU"]
    parameters: dict[str, str] = {}
    gpu_execution_accelerator: Accelerator | None = None


class FieldsFact(Fact):
    fields: list[str]


class DetectorTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    detectors: dict[str, DetectorFact]
    dynamic_batching: FieldsFact


def detector_table() -> DetectorTable:
    return load_table("vision.serving", "triton_detectors.yaml", DetectorTable)


@dataclass(frozen=True)
class Scheduling:
    """What ``config_pbtxt.ModelSpec`` does not say: batching preferences, instance placement, accelerators."""

    preferred_batch_sizes: Sequence[int] = ()
    max_queue_delay_microseconds: int | None = None  # None: no dynamic batcher
    instance_kind: str | None = None
    instance_count: int = 1
    gpu_accelerator: Accelerator | None = None
    default_model_filename: str | None = None


def _quote(value: str) -> str:
    return json.dumps(value)


def render(spec: ModelSpec, scheduling: Scheduling = Scheduling()) -> str:
    """``spec`` rendered by ``config_pbtxt.render`` plus the ``scheduling`` blocks."""
    if spec.dynamic_batching or spec.instance_count is not None:
        raise ValueError("give batching and instances through Scheduling, not ModelSpec")
    blocks = [config_pbtxt.render(spec).rstrip("\n")]
    if scheduling.default_model_filename:
        blocks.append(f"default_model_filename: {_quote(scheduling.default_model_filename)}")
    if scheduling.max_queue_delay_microseconds is not None:
        lines = ["dynamic_batching {"]
        if scheduling.preferred_batch_sizes:
            sizes = ", ".join(str(s) for s in scheduling.preferred_batch_sizes)
            lines.append(f"  preferred_batch_size: [ {sizes} ]")
        lines += [f"  max_queue_delay_microseconds: {scheduling.max_queue_delay_microseconds}", "}"]
        blocks.append("\n".join(lines))
    if scheduling.instance_kind is not None:
        blocks.append(f"instance_group [\n  {{\n    count: {scheduling.instance_count}\n"
                      f"    kind: {scheduling.instance_kind}\n  }}\n]")
    if scheduling.gpu_accelerator is not None:
        params = "".join(f"\n      parameters {{ key: {_quote(k)} value: {_quote(v)} }}"
                         for k, v in scheduling.gpu_accelerator.parameters.items())
        blocks.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [\n"
                      f"    {{\n      name: {_quote(scheduling.gpu_accelerator.name)}{params}\n    }}\n    ]\n  }}\n}}")
    return "\n".join(blocks) + "\n"


def write(model_dir: Path, spec: ModelSpec, scheduling: Scheduling = Scheduling()) -> Any:
    """Render, validate with ``model_config_pb2``, then atomically write ``model_dir/config.pbtxt``."""
    text = render(spec, scheduling)
    message = config_pbtxt.validate(text, source=f"{spec.name}/config.pbtxt")
    atomic_write_text(Path(model_dir) / "config.pbtxt", text)
    return message


def detector_runtime(kind: DetectorKind, preferred: Sequence[int], delay_us: int,
                     instances: int) -> tuple[DetectorFact, Scheduling]:
    """The table row for a non-python detector and the scheduling it gets (its instance kind, its accelerator)."""
    fact = detector_table().detectors[kind]
    return fact, Scheduling(preferred, delay_us, fact.instance_kind, instances, fact.gpu_execution_accelerator,
                            fact.default_model_filename)
