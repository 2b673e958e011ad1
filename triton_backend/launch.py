"""The command line that starts tritonserver: one process, or one rank per GPU the TensorRT-LLM engine was built for.

A TensorRT-LLM engine built with tensor/pipeline parallelism (tp x pp > 1) only loads when the executor runs under
MPI with exactly tp x pp ranks. Upstream starts Triton for it with ``scripts/launch_triton_server.py``: ``mpirun``
with one ``-n 1 tritonserver ...`` block per rank ("leader mode"), or one server with the orchestrator environment,
in which the backend spawns the engine's ranks itself. Every flag and variable used here is a row of
``triton_backend/upstream/launch.yaml`` that cites the upstream line it was read from.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError
from quant_common.facts import Fact, load_table
from triton_backend import config_pbtxt

TENSORRTLLM_BACKEND = "tensorrtllm"
ENGINE_PATH_PARAMETER = "gpt_model_path"  # the tensorrt_llm model's engine folder (triton_backend.interface)
TRITON_VERSION_ENV = "NVIDIA_TRITON_SERVER_VERSION"  # set in NVIDIA's tritonserver containers
Mode = Literal["single", "leader", "orchestrator"]


class ArgvFact(Fact):
    argv: tuple[str, ...]


class EnvFact(Fact):
    env: dict[str, str]


class MemoryFact(ArgvFact):
    after_triton: str  # only for Triton releases newer than this (NVIDIA_TRITON_SERVER_VERSION)


class MappingFact(Fact):
    path: tuple[str, ...]
    tp_size: str
    pp_size: str


class RuleFact(Fact):
    rule: str


class LaunchTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mpirun: ArgvFact
    rank_block: ArgvFact
    block_end: ArgvFact
    other_ranks: ArgvFact
    every_rank: ArgvFact
    orchestrator_env: EnvFact
    orchestrator_memory: MemoryFact
    engine_mapping: MappingFact
    world_size_rule: RuleFact


def table() -> LaunchTable:
    return load_table("triton_backend.upstream", "launch.yaml", LaunchTable)


@dataclass(frozen=True)
class EngineWorld:
    """How many GPUs (MPI ranks) an engine needs: tp_size x pp_size from its config.json."""

    tp_size: int = 1
    pp_size: int = 1
    config: Path | None = None

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size

    def describe(self) -> str:
        where = f" in {self.config}" if self.config else ""
        return f"world size {self.world_size} (tp {self.tp_size} x pp {self.pp_size}{where})"


def engine_world(engine_dir: Path) -> EngineWorld:
    """Read tp/pp from ``engine_dir/config.json``; an engine not built yet (no config.json, no mapping) is 1 GPU."""
    config = engine_dir / "config.json"
    if not config.is_file():
        return EngineWorld()
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantError(f"engine config {config} is unreadable or not JSON ({exc})", "rebuild the engine") from exc
    facts = table().engine_mapping
    mapping: object = data
    for key in facts.path:
        mapping = mapping.get(key) if isinstance(mapping, dict) else None
    if not isinstance(mapping, dict) or facts.tp_size not in mapping:
        return EngineWorld(config=config)
    sizes = (mapping.get(facts.tp_size), mapping.get(facts.pp_size, 1))
    if not all(isinstance(size, int) and size >= 1 for size in sizes):
        raise QuantError(f"engine config {config} has {'.'.join(facts.path)} {facts.tp_size}/{facts.pp_size} "
                         f"{sizes[0]!r}/{sizes[1]!r}, not positive integers", "rebuild the engine")
    return EngineWorld(int(sizes[0]), int(sizes[1]), config)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RepositoryEngines:
    """The models a repository runs on the TensorRT-LLM C++ backend and the world size of their engine."""

    models: tuple[str, ...] = ()
    world: EngineWorld = field(default_factory=EngineWorld)


def repository_engines(repo: Path) -> RepositoryEngines:
    models: list[str] = []
    worlds: list[EngineWorld] = []
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = config_pbtxt.load(path)
        if config.backend != TENSORRTLLM_BACKEND:
            continue
        models.append(path.parent.name)
        engine = config_pbtxt.parameters_of(config).get(ENGINE_PATH_PARAMETER)
        if engine:
            engine_dir = Path(engine) if Path(engine).is_absolute() else repo / engine
            worlds.append(engine_world(engine_dir))
    sizes = {w.world_size for w in worlds}
    if len(sizes) > 1:
        raise QuantError(f"the TensorRT-LLM models in {repo} need different world sizes "
                         f"({', '.join(w.describe() for w in worlds)})", "serve them from separate repositories")
    return RepositoryEngines(tuple(models), max(worlds, key=lambda w: w.world_size, default=EngineWorld()))


@dataclass(frozen=True)
class Launch:
    """What to run: ``argv`` with ``env`` added to the server's environment."""

    argv: list[str]
    env: dict[str, str]
    mode: Mode
    world_size: int

    def shell(self) -> str:
        """The exact command line, as one shell line (environment assignments first)."""
        return " ".join([f"{k}={shlex.quote(v)}" for k, v in self.env.items()] + [shlex.join(self.argv)])


def _newer_than(version: str | None, floor: str) -> bool:
    try:
        return version is not None and tuple(map(int, version.split("."))) > tuple(map(int, floor.split(".")))
    except ValueError:
        return False


def gpu_count() -> int:
    """GPUs on this host as upstream counts them (``nvidia-smi --list-gpus``); 0 without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, check=False).stdout
    return len([line for line in listing.splitlines() if line.strip()])


def plan(server_argv: list[str], *, world_size: int, models: tuple[str, ...], orchestrator: bool = False,
         gpus: int = 0, triton_version: str | None = None) -> Launch:
    """The launch of ``server_argv`` (one tritonserver command) for an engine of ``world_size`` GPUs.

    ``models``: the repository's TensorRT-LLM models (ranks > 0 load only these). ``orchestrator``: one server,
    the backend spawns the ranks. ``gpus`` / ``triton_version``: for the orchestrator's memory-pool flags.
    """
    facts = table()
    if orchestrator:
        if not models:
            raise QuantError("orchestrator mode needs a repository with a TensorRT-LLM (tensorrtllm backend) model",
                             "package with --runtime tensorrtllm, or serve without --orchestrator")
        block = list(server_argv)
        memory = facts.orchestrator_memory
        if _newer_than(triton_version, memory.after_triton):
            block += [flag for flag in memory.argv if "{gpu}" not in flag]
            block += [flag.format(gpu=gpu) for gpu in range(gpus) for flag in memory.argv if "{gpu}" in flag]
        block += [flag.format(rank=0) for flag in facts.every_rank.argv]
        argv = [*facts.mpirun.argv, *facts.rank_block.argv, *block, *facts.block_end.argv]
        return Launch(argv, dict(facts.orchestrator_env.env), "orchestrator", world_size)
    if world_size <= 1:
        return Launch(list(server_argv), {}, "single", 1)
    if not models:
        raise QuantError(f"world size {world_size} needs a repository with a TensorRT-LLM model", "package with "
                         "--runtime tensorrtllm")
    argv = list(facts.mpirun.argv)
    for rank in range(world_size):
        argv += [*facts.rank_block.argv, *server_argv]
        if rank > 0:
            argv += [flag for flag in facts.other_ranks.argv if "{model}" not in flag]
            argv += [flag.format(model=m) for m in models for flag in facts.other_ranks.argv if "{model}" in flag]
        argv += [flag.format(rank=rank) for flag in facts.every_rank.argv]
        argv += facts.block_end.argv
    return Launch(argv, {}, "leader", world_size)


def check_runnable(launch: Launch) -> None:
    """One line when the launcher is missing (``mpirun`` is not part of Triton; NVIDIA's containers ship it)."""
    if launch.mode != "single" and shutil.which(launch.argv[0]) is None:
        why = (f"world size {launch.world_size}" if launch.mode == "leader" else "orchestrator mode")
        raise QuantError(f"{why} runs tritonserver under {launch.argv[0]}, which is not on PATH",
                         "run inside NVIDIA's tritonserver *-trtllm-python-py3 container (it ships Open MPI) or "
                         "install Open MPI")


def triton_version() -> str | None:
    return os.environ.get(TRITON_VERSION_ENV)
