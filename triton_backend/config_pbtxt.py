"""Render Triton ``config.pbtxt`` text from our own model descriptions, and validate it offline.

Every config is rendered from a :class:`ModelSpec` (our template, in data), then parsed with tritonclient's
``model_config_pb2.ModelConfig`` before anything is written: an unknown field, a bad enum, an unfilled ``${...}``
placeholder or a tensor without a type fails here, with the model's name, instead of at server start.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant_common.atomic import atomic_write_text
from quant_common.errors import QuantError, require

DATA_TYPES = frozenset({
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16",
    "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
})


@dataclass(frozen=True)
class Tensor:
    """One input or output of a model. ``reshape=()`` removes the per-request dimension inside the model."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    optional: bool = False
    reshape: tuple[int, ...] | None = None
    ragged: bool = False


@dataclass(frozen=True)
class EnsembleStep:
    model_name: str
    input_map: Mapping[str, str]  # the step model's input name -> the ensemble tensor it reads
    output_map: Mapping[str, str]  # the step model's output name -> the ensemble tensor it writes
    model_version: int = -1


@dataclass
class ModelSpec:
    """What a config.pbtxt says, as data. ``backend`` or ``platform`` ("ensemble") names who runs it."""

    name: str
    max_batch_size: int | None  # None: left out (the llmapi model sets it from model.yaml, as upstream)
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    backend: str | None = None
    platform: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    decoupled: bool | None = None
    instance_count: int | None = None
    dynamic_batching: bool = False
    max_queue_delay_microseconds: int = 0
    max_queue_size: int = 0
    preferred_batch_size: int | None = None
    steps: Sequence[EnsembleStep] = ()


def _quote(value: str) -> str:
    # JSON string escaping is a subset of protobuf text-format escaping for the characters we emit.
    return json.dumps(value)


def _tensor_block(tensor: Tensor, indent: str) -> str:
    dims = ", ".join(str(d) for d in tensor.dims)
    lines = [f"{indent}{{", f"{indent}  name: {_quote(tensor.name)}", f"{indent}  data_type: {tensor.data_type}",
             f"{indent}  dims: [ {dims} ]"]
    if tensor.reshape is not None:
        shape = ", ".join(str(d) for d in tensor.reshape)
        lines.append(f"{indent}  reshape: {{ shape: [ {shape} ] }}")
    if tensor.optional:
        lines.append(f"{indent}  optional: true")
    if tensor.ragged:
        lines.append(f"{indent}  allow_ragged_batch: true")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _parameter_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render(spec: ModelSpec) -> str:
    """The config.pbtxt text for ``spec`` (not yet validated; :func:`validate` does that)."""
    out = [f"name: {_quote(spec.name)}"]
    if spec.platform:
        out.append(f"platform: {_quote(spec.platform)}")
    if spec.backend:
        out.append(f"backend: {_quote(spec.backend)}")
    if spec.max_batch_size is not None:
        out.append(f"max_batch_size: {spec.max_batch_size}")
    if spec.decoupled is not None:
        out.append(f"model_transaction_policy {{\n  decoupled: {_parameter_value(spec.decoupled)}\n}}")
    if spec.dynamic_batching:
        block = ["dynamic_batching {"]
        if spec.preferred_batch_size:
            block.append(f"  preferred_batch_size: [ {spec.preferred_batch_size} ]")
        block.append(f"  max_queue_delay_microseconds: {spec.max_queue_delay_microseconds}")
        if spec.max_queue_size > 0:
            # Requests beyond this queue length are rejected at once instead of waiting without bound.
            block.append(f"  default_queue_policy {{ max_queue_size: {spec.max_queue_size} }}")
        block.append("}")
        out.append("\n".join(block))
    for key, tensors in (("input", spec.inputs), ("output", spec.outputs)):
        blocks = ",\n".join(_tensor_block(t, "  ") for t in tensors)
        out.append(f"{key} [\n{blocks}\n]")
    if spec.steps:
        steps = []
        for step in spec.steps:
            maps = []
            for kind, mapping in (("input_map", step.input_map), ("output_map", step.output_map)):
                for key, value in mapping.items():
                    maps.append(f"      {kind} {{ key: {_quote(key)} value: {_quote(value)} }}")
            body = "\n".join(maps)
            steps.append(f"    {{\n      model_name: {_quote(step.model_name)}\n"
                         f"      model_version: {step.model_version}\n{body}\n    }}")
        out.append("ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}")
    if spec.instance_count is not None:
        out.append(f"instance_group [\n  {{\n    count: {spec.instance_count}\n    kind: KIND_CPU\n  }}\n]")
    for key, value in spec.parameters.items():
        out.append(f"parameters {{\n  key: {_quote(key)}\n  value: {{ string_value: "
                   f"{_quote(_parameter_value(value))} }}\n}}")
    return "\n".join(out) + "\n"


def require_model_config_pb2() -> Any:
    return require("tritonclient.grpc.model_config_pb2", purpose="validating Triton configs",
                   install="pip install 'tritonclient[grpc]'")


def validate(text: str, source: str = "config.pbtxt") -> Any:
    """Parse ``text`` as a Triton ``ModelConfig``; raise one line naming ``source`` when it is not one.

    Returns the parsed ``model_config_pb2.ModelConfig`` message.
    """
    if "${" in text:
        start = text.index("${")
        raise QuantError(f"{source} has an unfilled template placeholder {text[start:text.find('}', start) + 1]}",
                         "fill every parameter before writing the repository")
    model_config_pb2 = require_model_config_pb2()
    text_format = require("google.protobuf.text_format", purpose="validating Triton configs",
                          install="pip install protobuf")
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise QuantError(f"{source} is not a valid Triton model config: {exc}",
                         "fix the repository options that produced it") from exc
    if not message.name:
        raise QuantError(f"{source} has no model name", "set name in the model config")
    if not (message.backend or message.platform):
        raise QuantError(f"{source} names neither a backend nor a platform", "set backend or platform")
    for tensor in list(message.input) + list(message.output):
        if tensor.data_type == model_config_pb2.TYPE_INVALID:
            raise QuantError(f"{source}: tensor {tensor.name!r} has no data_type", "give every tensor a type")
    return message


def write(model_dir: Path, spec: ModelSpec) -> Path:
    """Render, validate, then atomically write ``model_dir/config.pbtxt``."""
    text = render(spec)
    validate(text, source=f"{spec.name}/config.pbtxt")
    return atomic_write_text(Path(model_dir) / "config.pbtxt", text)


def load(path: str | Path) -> Any:
    """Read and validate an existing config.pbtxt (used by tests and by ``serve`` before launching)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise QuantError(f"cannot read {file}: {exc.strerror or exc}", "check the model repository path") from exc
    return validate(text, source=str(file))


def parameters_of(message: Any) -> dict[str, str]:
    """``parameters`` of a parsed ModelConfig as a plain dict of strings."""
    return {key: value.string_value for key, value in message.parameters.items()}
