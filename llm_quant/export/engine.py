"""The TensorRT-LLM engine step: ``trtllm-build`` argv from the preset; run only where TensorRT-LLM <=1.2 is.

TensorRT-LLM 1.2.x is the last release line shipping ``trtllm-build`` and the TensorRT engine backend (upstream
main removed both; the PyTorch backend is the default since 1.0). Where it is absent (every machine here) the step
is recorded as skipped with the exact command to run elsewhere.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from llm_quant.config import TrtllmBuildOptions
from llm_quant.upstream import target_version, trtllm_facts
from quant_common.atomic import Staging, staged_dir
from quant_common.errors import QuantError

LAST_ENGINE_RELEASE = (1, 2)


@dataclass
class EngineResult:
    status: str  # "built" | "skipped"
    command: list[str]
    command_line: str
    path: str | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """What the argv is rendered for: the checkpoint's algorithms and the TensorRT-LLM release (None: any)."""

    quant_algo: str | None = None
    kv_cache_quant_algo: str | None = None
    release: str | None = None  # a release name of llm_quant/upstream/trtllm_build.yaml


def paged_context_fmha(target: Target) -> str:
    """``enable`` unless the target release's builder rejects (0.16/0.17) or silently drops (0.18+) paged context
    FMHA for this KV cache; with the release unknown, ``enable`` only where every release allows it."""
    rules = trtllm_facts().paged_context_fmha_rules(target.release)
    return "enable" if all(r.allows(target.quant_algo, target.kv_cache_quant_algo) for r in rules) else "disable"


def trtllm_build_argv(checkpoint_dir: Path, engine_dir: Path, opts: TrtllmBuildOptions, *, workers: int = 1,
                      target: Target | None = None) -> list[str]:
    target = target or Target()
    facts = trtllm_facts()
    pairs: list[tuple[str, str]] = [
        ("--checkpoint_dir", str(checkpoint_dir)),
        ("--output_dir", str(engine_dir)),
        ("--max_batch_size", str(opts.max_batch_size)),
        ("--max_input_len", str(opts.max_input_len)),
        ("--max_seq_len", str(opts.max_seq_len)),
        ("--max_num_tokens", str(opts.max_num_tokens)),
        ("--max_beam_width", str(opts.max_beam_width)),
        ("--gemm_plugin", opts.gemm_plugin),
        ("--gpt_attention_plugin", opts.gpt_attention_plugin),
        ("--kv_cache_type", opts.kv_cache_type),
        ("--workers", str(workers)),
    ]
    if opts.kv_cache_type == "paged":
        pairs.append(("--use_paged_context_fmha", paged_context_fmha(target)))
    argv = ["trtllm-build"]
    for name, value in pairs:
        row = facts.flag(name, target.release)  # a flag missing from the table is a bug: KeyError, not a guess
        if row.values is not None and value not in row.values:
            raise QuantError(f"trtllm-build {name} {value} is not accepted by TensorRT-LLM {target.release or ''}"
                             f" (accepts {', '.join(row.values)})", "change the preset's trtllm_build options")
        argv += [name, value]
    return argv


def installed_trtllm() -> str | None:
    for dist in ("tensorrt-llm", "tensorrt_llm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in version.split(".")[:2]]
    return parts[0], parts[1] if len(parts) > 1 else 0


def skip_reason() -> str | None:
    """Why the engine cannot be built here (None when it can)."""
    version = installed_trtllm()
    if version is None:
        return "TensorRT-LLM is not installed"
    if _major_minor(version) > LAST_ENGINE_RELEASE:
        return f"TensorRT-LLM {version} has no trtllm-build engine backend (last in 1.2.x)"
    if shutil.which("trtllm-build") is None:
        return f"TensorRT-LLM {version} is installed but trtllm-build is not on PATH"
    return None


def resolve_target(quant: dict[str, Any], *, requested_version: str | None = None,
                   engine_dir: Path | None = None) -> tuple[Target, dict[str, Any]]:
    """The render target from the checkpoint's ``quantization`` and the TensorRT-LLM version (installed, else the
    engine's config.json, else ``requested_version``); plus facts for build.json."""
    version, how = target_version(installed_trtllm(), engine_dir, requested_version)
    release = trtllm_facts().release_for(version).name if version is not None else None
    target = Target(quant.get("quant_algo"), quant.get("kv_cache_quant_algo"), release)
    return target, {"trtllm_version": version, "from": how, "release": release}


def build_engine(checkpoint_dir: Path, engine_dir: Path, opts: TrtllmBuildOptions, *, workers: int = 1,
                 log_path: Path | None = None, enabled: bool = True, staging: Staging | None = None,
                 target: Target | None = None) -> EngineResult:
    """Build where possible. With ``staging``, reported paths are where they will be after the swap."""

    def shown(path: Path) -> Path:
        return staging.final_path(path) if staging is not None else path

    argv = trtllm_build_argv(shown(checkpoint_dir), shown(engine_dir), opts, workers=workers, target=target)
    line = shlex.join(argv)
    reason = skip_reason() if enabled else "engine build disabled (--no-engine)"
    if reason is not None:
        return EngineResult("skipped", argv, line, None, reason)
    with staged_dir(engine_dir) as tmp:
        staged_argv = trtllm_build_argv(checkpoint_dir, engine_dir, opts, workers=workers, target=target)
        staged_argv[staged_argv.index("--output_dir") + 1] = str(tmp)
        proc = subprocess.run(staged_argv, capture_output=True, text=True, check=False)
        if log_path is not None:
            log_path.write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise QuantError(f"trtllm-build failed (exit {proc.returncode}): {tail[0][:200]}",
                             f"see {log_path or 'its output'}; the checkpoint is intact")
        if not (tmp / "config.json").is_file() or not list(tmp.glob("rank*.engine")):
            raise QuantError(f"trtllm-build wrote no engine into {engine_dir}", "check the trtllm-build log")
    return EngineResult("built", argv, line, str(shown(engine_dir)))
