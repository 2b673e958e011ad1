"""Write a Triton model repository (``inflight_batcher_llm`` shape, or the LLM-API forward path) from a spec.

``package(spec, out)`` is the library call; ``package_for_build(...)`` is what ``llm-quant build`` calls at its
end. The tree is staged beside ``out`` and swapped in whole (``quant_common.atomic.staged_dir``), and every
config.pbtxt is validated with ``model_config_pb2`` before it is written.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from quant_common.atomic import Staging, atomic_write_json, atomic_write_text, staged_dir
from quant_common.errors import QuantError, is_importable
from quant_common.manifest import package_versions, utc_now
from triton_backend import config_pbtxt, engine_facts, executor, interface, layout, llmapi_support
from triton_backend.options import RUNTIMES, Runtime, RuntimeChoice, TritonOptions
from triton_backend.target import Target, choose_target

MODELS_SOURCE = Path(__file__).resolve().parent / "models"
EMBEDDED_FORMAT = "tq-embedded-v1"
MANIFEST = "repository.json"  # beside the model folders; Triton only loads sub-directories
BUILD_MANIFEST = "build.json"  # what llm-quant build writes into its output folder (the trtllm-build command)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


class RepositorySpec(BaseModel):
    """Everything a repository is made from. Paths are checked by :func:`package`."""

    model_config = ConfigDict(extra="forbid")

    runtime: Runtime
    options: TritonOptions = Field(default_factory=TritonOptions)
    tokenizer_dir: Path
    embedded_dir: Path | None = None  # pytorch runtime: runtime.json + modelopt state (llm_quant.runtime)
    engine_dir: Path | None = None  # tensorrtllm runtime: trtllm-build output
    hf_checkpoint_dir: Path | None = None  # llmapi runtime: Hugging Face unified (quantized) checkpoint
    trtllm_checkpoint_dir: Path | None = None  # recorded for provenance
    runtime_loader: str = "llm_quant.runtime:load_quantized"  # pytorch runtime: "module:function"
    trtllm_version: str | None = None  # --trtllm-version: the backend to render for (triton_backend.target)
    # (max_input_len, max_seq_len) of the trtllm-build command that will build the engine: the limits the
    # repository enforces for the tensorrtllm runtime while engine_dir has no config.json yet.
    planned_engine_limits: tuple[int, int] | None = None
    # A build writes into a staging folder that is renamed when complete: absolute paths written into the
    # repository (engine_dir, the llmapi checkpoint) must name the final place, not the staging one.
    staging_root: Path | None = None
    final_root: Path | None = None

    def final_path(self, path: Path) -> Path:
        """``path`` where it will live once the build folder is in its final place (absolute)."""
        if self.staging_root is not None and self.final_root is not None:
            return Staging(self.staging_root, self.final_root).final_path(path)
        return path.resolve()


class RepositoryResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    runtime: Runtime
    models: list[str]
    max_input_len: int
    max_seq_len: int
    target: Target | None = None
    warnings: list[str] = []


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise QuantError(f"{what} {path} does not exist", "point to the build output that contains it") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantError(f"{what} {path} is unreadable or not JSON ({exc})", "rebuild it") from exc
    if not isinstance(data, dict):
        raise QuantError(f"{what} {path} is not a JSON object", "rebuild it")
    return data


def _model_config(spec: RepositorySpec) -> dict[str, Any] | None:
    """The model's own config.json (the embedded runtime's base model, the HF or TensorRT-LLM checkpoint)."""
    candidates: list[Path] = []
    if spec.embedded_dir is not None:
        runtime = _read_json(spec.embedded_dir / "runtime.json", "embedded runtime description")
        base = Path(str(runtime.get("base_model", "")))
        candidates.append((base if base.is_absolute() else spec.embedded_dir / base) / "config.json")
        candidates.append(spec.embedded_dir / "config.json")
    for folder in (spec.hf_checkpoint_dir, spec.trtllm_checkpoint_dir):
        if folder is not None:
            candidates.append(folder / "config.json")
    for candidate in candidates:
        if candidate.is_file():
            return _read_json(candidate, "model config")
    return None


def _limits(spec: RepositorySpec) -> tuple[int, int]:
    """(max_input_len, max_seq_len) the repository enforces: one source per runtime.

    tensorrtllm: the engine's build_config, or before it is built the trtllm-build command that will build it (the
    model's position limit is not it: the executor rejects what the engine was not built for). Other runtimes: the
    model's ``max_position_embeddings``. Triton options may lower them, never raise them above an engine's."""
    opts = spec.options
    if spec.runtime == "tensorrtllm":
        built = engine_facts.engine_limits(spec.engine_dir)
        engine = built or spec.planned_engine_limits
        if engine is None:
            raise QuantError(f"engine directory {spec.engine_dir} has no config.json and no trtllm-build command is "
                             "recorded for it, so the engine's max_input_len/max_seq_len are unknown",
                             "build the engine first, or package the llm-quant build folder whose build.json "
                             "prints its trtllm-build command")
        where = "the engine" if built else "the trtllm-build command that will build the engine"
        for name, value, limit in (("max_input_len", opts.max_input_len, engine[0]),
                                   ("max_seq_len", opts.max_seq_len, engine[1])):
            if value is not None and value > limit:
                raise QuantError(f"triton.{name} {value} is above {where}'s {name} {limit}: the executor would "
                                 "reject what preprocessing lets through", f"lower triton.{name} to at most {limit}")
        max_seq_len = opts.max_seq_len or engine[1]
        return opts.max_input_len or min(engine[0], max_seq_len - 1), max_seq_len
    positions = (_model_config(spec) or {}).get("max_position_embeddings")
    max_seq_len = opts.max_seq_len or (positions if isinstance(positions, int) and positions > 1 else 2048)
    return opts.max_input_len or max_seq_len - 1, max_seq_len


def _check_inputs(spec: RepositorySpec) -> list[str]:
    warnings: list[str] = []
    if not any((spec.tokenizer_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                                   "tokenizer.model")):
        raise QuantError(f"no tokenizer files in {spec.tokenizer_dir}",
                         "pass the Hugging Face model folder (with tokenizer.json) as the tokenizer directory")
    if spec.runtime == "pytorch":
        if spec.embedded_dir is None:
            raise QuantError("the pytorch runtime needs the build's embedded/ directory",
                             "pass --embedded-dir (written by llm-quant build)")
        runtime = _read_json(spec.embedded_dir / "runtime.json", "embedded runtime description")
        if runtime.get("format") != EMBEDDED_FORMAT:
            raise QuantError(f"{spec.embedded_dir}/runtime.json has format {runtime.get('format')!r}, "
                             f"expected {EMBEDDED_FORMAT!r}", "rebuild with this version of llm-quant build")
    elif spec.runtime == "tensorrtllm":
        if spec.engine_dir is None:
            raise QuantError("the tensorrtllm runtime needs a TensorRT-LLM engine directory",
                             "pass --engine-dir (trtllm-build --output_dir) or use --runtime pytorch")
        if not (spec.engine_dir / "config.json").is_file():
            warnings.append(f"engine directory {spec.engine_dir} has no config.json yet: run trtllm-build into it "
                            "before serving")
        static = executor.batching_warning(spec.options.batching_strategy)
        if static:
            warnings.append(static)
    elif spec.runtime == "llmapi":
        if spec.hf_checkpoint_dir is None or not (spec.hf_checkpoint_dir / "config.json").is_file():
            raise QuantError("the llmapi runtime needs the Hugging Face (unified) checkpoint folder with config.json",
                             "pass --hf-checkpoint-dir (written by llm-quant build)")
        llmapi_support.check_checkpoint(spec.hf_checkpoint_dir)
        if not is_importable("tensorrt_llm"):
            warnings.append("TensorRT-LLM is not installed here: this repository is served by its PyTorch backend "
                            "(the NGC tritonserver *-trtllm-python-py3 image)")
    return warnings


def _path_param(target: Path, out: Path) -> str:
    """A path as the python models read it: relative to the repository when both share a parent (so a build
    folder can move as a whole), else absolute."""
    target = target.resolve()
    base = out.resolve().parent
    try:
        return os.path.join("..", str(target.relative_to(base)))
    except ValueError:
        return str(target)


def _copy_model_code(source: str, model_dir: Path) -> None:
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODELS_SOURCE / source, version / "model.py")


def _llmapi_yaml(spec: RepositorySpec) -> str:
    opts = spec.options
    assert spec.hf_checkpoint_dir is not None
    config = {
        "model": str(spec.final_path(spec.hf_checkpoint_dir)),
        "backend": "pytorch",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "kv_cache_config": {"free_gpu_memory_fraction": opts.kv_cache_free_gpu_mem_fraction,
                            "enable_block_reuse": opts.enable_kv_cache_reuse},
        "max_batch_size": opts.max_batch_size,
        "triton_config": {"max_batch_size": 0, "decoupled": opts.decoupled},
    }
    return "# LLM() arguments for TensorRT-LLM's PyTorch backend (written by llm-quant package)\n" + yaml.safe_dump(
        config, sort_keys=False)


def package(spec: RepositorySpec, out: str | os.PathLike[str]) -> RepositoryResult:
    """Write the repository for ``spec`` at ``out`` (replacing any previous one only when complete)."""
    out_path = Path(out)
    warnings = _check_inputs(spec)
    max_input_len, max_seq_len = _limits(spec)
    if spec.runtime == "tensorrtllm":
        logits = engine_facts.logits_datatype(spec.engine_dir, spec.trtllm_checkpoint_dir, spec.options.logits_datatype)
    else:  # no logits are returned by the other runtimes: the option, or the backend's default
        logits = spec.options.logits_datatype or engine_facts.default_logits_datatype()
    opts = spec.options.model_copy(update={"logits_datatype": logits})
    if max_input_len >= max_seq_len:
        raise QuantError(f"max_input_len {max_input_len} leaves no room to generate within max_seq_len {max_seq_len}",
                         "lower triton.max_input_len or raise triton.max_seq_len")
    tokenizer = _path_param(spec.tokenizer_dir, out_path)
    target = choose_target(spec.trtllm_version, spec.engine_dir if spec.runtime == "tensorrtllm" else None)
    fam = interface.family(target.family)

    specs: list[config_pbtxt.ModelSpec] = []
    code: dict[str, str] = {}
    if spec.runtime == "llmapi":
        specs.append(layout.llmapi(opts))
        code["tensorrt_llm"] = "llmapi.py"
    else:
        if spec.runtime == "tensorrtllm":
            assert spec.engine_dir is not None
            core = layout.tensorrt_llm_core(opts, fam, backend="tensorrtllm", parameters=interface.tensorrtllm_parameters(
                opts, str(spec.final_path(spec.engine_dir)), str(spec.final_path(spec.tokenizer_dir)), fam))
        else:
            assert spec.embedded_dir is not None
            core = layout.tensorrt_llm_core(opts, fam, backend="python", parameters={
                "embedded_dir": _path_param(spec.embedded_dir, out_path),
                "runtime_loader": spec.runtime_loader,
                "max_seq_len": max_seq_len,
                "exclude_input_in_output": opts.exclude_input_in_output,
                "torch_threads": opts.torch_threads,
                "batch_requests": opts.batch_requests,
            })
            code["tensorrt_llm"] = "tensorrt_llm_pytorch.py"
        vocab = engine_facts.vocab_size(spec.engine_dir if spec.runtime == "tensorrtllm" else None,
                                        spec.trtllm_checkpoint_dir, _model_config(spec))
        specs += [layout.preprocessing(opts, fam, tokenizer, max_input_len, vocab), core,
                  layout.postprocessing(opts, fam, tokenizer), layout.ensemble(opts, fam), layout.bls(opts, fam)]
        code.update(preprocessing="preprocessing.py", postprocessing="postprocessing.py",
                    tensorrt_llm_bls="tensorrt_llm_bls.py")

    # Validate every config before touching the file system.
    for model in specs:
        config_pbtxt.validate(config_pbtxt.render(model), source=f"{model.name}/config.pbtxt")

    with staged_dir(out_path) as tmp:
        for model in specs:
            model_dir = tmp / model.name
            model_dir.mkdir()
            config_pbtxt.write(model_dir, model)
            if model.name in code:
                _copy_model_code(code[model.name], model_dir)
            else:
                (model_dir / "1").mkdir()  # ensembles and C++ backends still need a version folder
        if spec.runtime == "llmapi":
            atomic_write_text(tmp / "tensorrt_llm" / "1" / "model.yaml", _llmapi_yaml(spec))
        result = RepositoryResult(path=out_path, runtime=spec.runtime, models=[m.name for m in specs],
                                  max_input_len=max_input_len, max_seq_len=max_seq_len, target=target,
                                  warnings=warnings)
        # Inside a build's staging folder, record where the repository will be, as for every other path.
        recorded = result.model_copy(update={"path": spec.final_path(out_path)}) if spec.staging_root else result
        atomic_write_json(tmp / MANIFEST, {
            "created": utc_now(), "spec": _spec_record(spec), "result": recorded.model_dump(mode="json"),
            "default_model": "tensorrt_llm" if spec.runtime == "llmapi" else "ensemble",
            "versions": package_versions(["tritonclient", "nvidia-pytriton", "torch", "transformers",
                                          "nvidia-modelopt", "tensorrt_llm"]),
        })
    return result


def _spec_record(spec: RepositorySpec) -> dict[str, Any]:
    record = spec.model_dump(mode="json", exclude={"staging_root", "final_root"})
    for key in ("tokenizer_dir", "embedded_dir", "engine_dir", "hf_checkpoint_dir", "trtllm_checkpoint_dir"):
        value = getattr(spec, key)
        if value is not None:
            record[key] = str(spec.final_path(value))
    return record


def choose_runtime(requested: str, engine_dir: Path | None) -> Runtime:
    """``auto``: the C++ TensorRT-LLM backend where an engine was built, else the embedded PyTorch runtime."""
    if requested == "auto":
        return "tensorrtllm" if engine_dir is not None and (engine_dir / "config.json").is_file() else "pytorch"
    if requested not in RUNTIMES:
        raise QuantError(f"unknown runtime {requested!r}", f"choose one of auto, {', '.join(RUNTIMES)}")
    return requested  # type: ignore[return-value]


def package_for_build(
    build_dir: str | os.PathLike[str],
    *,
    options: TritonOptions | Mapping[str, Any] | None = None,
    runtime: RuntimeChoice = "auto",
    embedded_dir: str | os.PathLike[str] | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    engine_dir: str | os.PathLike[str] | None = None,
    trtllm_checkpoint_dir: str | os.PathLike[str] | None = None,
    hf_checkpoint_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    final_build_dir: str | os.PathLike[str] | None = None,
    trtllm_version: str | None = None,
    planned_engine_limits: tuple[int, int] | None = None,
) -> RepositoryResult:
    """Package a ``llm-quant build`` output folder as ``<build_dir>/triton_repo`` (or ``out``).

    Defaults: ``embedded_dir = build_dir/embedded``; ``tokenizer_dir = embedded_dir``; ``options`` is the preset's
    ``triton:`` section (a dict is validated as :class:`TritonOptions`); ``runtime="auto"`` picks ``tensorrtllm``
    when ``engine_dir`` holds a built engine, else ``pytorch``. ``final_build_dir``: where ``build_dir`` will be
    once a build swaps its staging folder in (``llm-quant build`` passes it); absolute paths in the configs point
    there. ``trtllm_version``: the TensorRT-LLM backend to render for when none is installed or recorded in the
    engine (``triton_backend.target``). ``planned_engine_limits``: (max_input_len, max_seq_len) of the trtllm-build
    command that will build ``engine_dir`` (default: the command ``build.json`` records for that folder).
    """
    build = Path(build_dir)
    if not build.is_dir():
        raise QuantError(f"build directory {build} does not exist", "pass the --out folder of llm-quant build")
    if not isinstance(options, TritonOptions):
        try:
            options = TritonOptions.model_validate(dict(options or {}))
        except Exception as exc:  # pydantic.ValidationError: keep its first line only
            first = str(exc).splitlines()
            raise QuantError(f"invalid triton options: {' '.join(first[:3])}",
                             "fix the preset's triton: section") from exc
    embedded = Path(embedded_dir) if embedded_dir is not None else build / "embedded"
    engine = Path(engine_dir) if engine_dir is not None else None
    chosen = choose_runtime(runtime, engine)
    spec = RepositorySpec(
        runtime=chosen,
        options=options,
        tokenizer_dir=Path(tokenizer_dir) if tokenizer_dir is not None else embedded,
        embedded_dir=embedded if chosen == "pytorch" else (embedded if embedded.is_dir() else None),
        engine_dir=engine,
        hf_checkpoint_dir=Path(hf_checkpoint_dir) if hf_checkpoint_dir is not None else None,
        trtllm_checkpoint_dir=Path(trtllm_checkpoint_dir) if trtllm_checkpoint_dir is not None else None,
        trtllm_version=trtllm_version,
    )
    if final_build_dir is not None:
        spec.staging_root, spec.final_root = build, Path(final_build_dir)
    if engine is not None:
        spec.planned_engine_limits = planned_engine_limits or recorded_engine_limits(build, engine)
    return package(spec, Path(out) if out is not None else build / "triton_repo")


def recorded_engine_limits(build_dir: Path, engine_dir: Path) -> tuple[int, int] | None:
    """(max_input_len, max_seq_len) of the trtllm-build command ``llm-quant build`` recorded in ``build.json`` for
    ``engine_dir`` (None: no build.json, or its command writes another folder)."""
    path = build_dir / BUILD_MANIFEST
    if not path.is_file():
        return None
    command = (_read_json(path, "build manifest").get("engine") or {}).get("command") or []
    if not isinstance(command, list) or "--output_dir" not in command[:-1]:
        return None
    if Path(str(command[command.index("--output_dir") + 1])).resolve() != engine_dir.resolve():
        return None
    return engine_facts.command_limits([str(arg) for arg in command])


def read_manifest(repo: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``repository.json`` written by :func:`package` ({} for repositories written by other tools)."""
    path = Path(repo) / MANIFEST
    return _read_json(path, "repository manifest") if path.is_file() else {}
