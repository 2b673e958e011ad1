"""Check a model repository against what a TensorRT-LLM backend version requires and accepts (the fact table).

``llm-quant package --check REPO [--trtllm-version V]`` runs :func:`check_repository` before a repository is
shipped to a GPU machine: every model named like one of upstream's must declare upstream's inputs with the same
name, dtype, dims, optionality and reshape (else upstream's clients are refused, or a sampling input is silently
dropped), and the C++ ``tensorrt_llm`` model must carry every parameter the backend reads without a fallback.
One line per problem; an empty list means it will load and accept upstream's clients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quant_common.errors import QuantError
from triton_backend import config_pbtxt
from triton_backend.interface import (
    UPSTREAM_MODELS,
    Family,
    TensorFact,
    default_family,
    family,
    family_for_version,
)
from triton_backend.repository import read_manifest


def _dtype_name(message: Any, value: int) -> str:
    return str(message.DataType.Name(value))


def _tensor_problems(model: str, kind: str, want: TensorFact, got: Any, pb2: Any) -> list[str]:
    problems = []
    dtype = _dtype_name(pb2, got.data_type)
    if want.template is None and dtype != want.data_type:
        problems.append(f"{model}: {kind} {want.name!r} is {dtype}, upstream declares {want.data_type}")
    if list(got.dims) != want.dims:
        problems.append(f"{model}: {kind} {want.name!r} has dims {list(got.dims)}, upstream declares {want.dims}")
    if kind == "input" and bool(got.optional) != want.optional:
        problems.append(f"{model}: input {want.name!r} is {'optional' if got.optional else 'required'}, upstream "
                        f"declares it {'optional' if want.optional else 'required'}")
    reshape = list(got.reshape.shape) if got.HasField("reshape") else None
    if reshape != want.reshape:
        problems.append(f"{model}: {kind} {want.name!r} has reshape {reshape}, upstream declares {want.reshape}")
    return problems


def _model_problems(name: str, config: Any, fam: Family, pb2: Any) -> list[str]:
    upstream = fam.models[name]
    declared = {t.name: t for t in config.input}
    problems: list[str] = []
    for want in upstream.inputs:
        if want.name not in declared:
            problems.append(f"{name}: missing input {want.name!r} ({want.data_type} {want.dims}"
                            f"{', optional' if want.optional else ''}): upstream's clients sending it are refused")
        else:
            problems += _tensor_problems(name, "input", want, declared[want.name], pb2)
    upstream_names = {t.name for t in upstream.inputs}
    renamed = {ours: theirs for ours, theirs in fam.sampling.names.items() if ours != theirs}
    for extra in sorted(set(declared) - upstream_names):
        hint = (f"; this backend version reads {renamed[extra]!r}" if extra in renamed
                else "; upstream's clients never send it" if not declared[extra].optional else "")
        if extra in renamed or not declared[extra].optional:
            problems.append(f"{name}: input {extra!r} is not one upstream's {name} declares{hint}")
    outputs = {t.name: t for t in config.output}
    for want in upstream.outputs:
        if want.name in outputs:
            problems += _tensor_problems(name, "output", want, outputs[want.name], pb2)
        elif name in CLIENT_FACING:
            problems.append(f"{name}: missing output {want.name!r} ({want.data_type} {want.dims}): upstream's clients "
                            "that request it are refused by the server")
    return problems


# Models clients call directly: every output upstream's clients may request must be declared (Triton refuses a
# request for an undeclared output); a declared one the runtime does not fill is left out of the response.
CLIENT_FACING = ("ensemble", "tensorrt_llm_bls")


def _parameter_problems(config: Any, fam: Family) -> list[str]:
    params = config_pbtxt.parameters_of(config)
    problems = []
    for required in fam.required_parameters:
        if required.key not in params:
            problems.append(f"tensorrt_llm: parameter {required.key!r} is missing; TensorRT-LLM backend {fam.name} "
                            f"reads it without a fallback ({required.source.cite()}) and the model will not load")
        elif params[required.key].startswith("${"):
            problems.append(f"tensorrt_llm: parameter {required.key!r} is the unfilled template "
                            f"{params[required.key]!r}")
    return problems


def target_family(repo: Path, trtllm_version: str | None) -> Family:
    """``--trtllm-version`` when given, else the family recorded in ``repository.json``, else the newest."""
    if trtllm_version is not None:
        return family_for_version(trtllm_version)
    recorded = ((read_manifest(repo).get("result") or {}).get("target") or {}).get("family")
    return family(recorded) if recorded else default_family()


def check_repository(repo: str | Path, fam: Family) -> list[str]:
    """Every reason ``repo`` would not load on, or would refuse upstream's clients of, backend family ``fam``."""
    root = Path(repo)
    configs = sorted(root.glob("*/config.pbtxt"))
    if not root.is_dir() or not configs:
        raise QuantError(f"{root} is not a Triton model repository (no */config.pbtxt)",
                         "pass the folder written by llm-quant package")
    pb2 = config_pbtxt.require_model_config_pb2()
    problems: list[str] = []
    parsed = {}
    for path in configs:
        try:
            parsed[path.parent.name] = config_pbtxt.load(path)
        except QuantError as exc:
            problems.append(str(exc).split("\n")[0])
    core = parsed.get("tensorrt_llm")
    if core is not None and any(t.name == "text_input" for t in core.input):
        # The LLM-API model: not part of the inflight_batcher_llm table.
        return problems
    for name in UPSTREAM_MODELS:
        if name in parsed:
            problems += _model_problems(name, parsed[name], fam, pb2)
    if core is not None and core.backend == "tensorrtllm":
        problems += _parameter_problems(core, fam)
    return problems
