"""How `serve` starts tritonserver for a TensorRT-LLM engine built for tp x pp GPUs (no MPI or GPU needed: the
exact command lines are compared with what tensorrtllm_backend's scripts/launch_triton_server.py builds)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_quant import cli
from quant_common.errors import QuantError
from triton_backend import launch
from triton_backend.repository import RepositorySpec, package
from triton_backend.server import TritonServer, Tritonserver

BINARY = "/opt/tritonserver/bin/tritonserver"


def _repo(tmp_path: Path, tp: int, pp: int, runtime: str = "tensorrtllm") -> Path:
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    (tokenizer / "tokenizer_config.json").write_text("{}")
    engine = tmp_path / f"engine_tp{tp}_pp{pp}"
    engine.mkdir()
    # What trtllm-build writes beside rank{N}.engine (EngineConfig.to_dict: pretrained_config + build_config).
    (engine / "config.json").write_text(json.dumps({
        "version": "0.19.0",
        "pretrained_config": {"architecture": "LlamaForCausalLM",
                              "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}},
        "build_config": {"max_input_len": 100, "max_seq_len": 200}}))
    spec = RepositorySpec(runtime=runtime, tokenizer_dir=tokenizer, engine_dir=engine)
    return package(spec, tmp_path / f"repo_tp{tp}_pp{pp}").path


def _server_flags(repo: Path) -> list[str]:
    return [f"--model-repository={repo.resolve()}", "--http-address=127.0.0.1", "--http-port=8000",
            "--grpc-address=127.0.0.1", "--grpc-port=8001", "--metrics-address=127.0.0.1", "--metrics-port=8002",
            "--allow-gpu-metrics=false"]


def _plan(repo: Path, orchestrator: bool = False) -> launch.Launch:
    return TritonServer(repo, orchestrator=orchestrator).launch_plan(Tritonserver(Path(BINARY), None))


def test_one_gpu_engine_keeps_one_plain_process(tmp_path):
    repo = _repo(tmp_path, 1, 1)
    plan = _plan(repo)
    assert plan.argv == [BINARY, *_server_flags(repo)]
    assert plan.env == {} and plan.mode == "single"


def test_two_gpus_run_one_mpi_rank_each(tmp_path):
    repo = _repo(tmp_path, 2, 1)
    flags = _server_flags(repo)
    assert _plan(repo).argv == [
        "mpirun", "--allow-run-as-root",
        "-n", "1", BINARY, *flags,
        "--disable-auto-complete-config", "--backend-config=python,shm-region-prefix-name=prefix0_", ":",
        "-n", "1", BINARY, *flags, "--model-control-mode=explicit", "--load-model=tensorrt_llm",
        "--disable-auto-complete-config", "--backend-config=python,shm-region-prefix-name=prefix1_", ":",
    ]


def test_tp2_pp2_runs_four_ranks(tmp_path):
    repo = _repo(tmp_path, 2, 2)
    flags = " ".join(_server_flags(repo))
    later = "--model-control-mode=explicit --load-model=tensorrt_llm "
    expected = "mpirun --allow-run-as-root " + " ".join(
        f"-n 1 {BINARY} {flags} {later if rank else ''}--disable-auto-complete-config "
        f"--backend-config=python,shm-region-prefix-name=prefix{rank}_ :" for rank in range(4))
    plan = _plan(repo)
    assert plan.shell() == expected
    assert plan.world_size == 4 and plan.argv.count("-n") == 4 and plan.env == {}


def test_orchestrator_is_one_server_with_the_backend_spawning_ranks(tmp_path, monkeypatch):
    repo = _repo(tmp_path, 2, 1)
    monkeypatch.delenv(launch.TRITON_VERSION_ENV, raising=False)
    plan = _plan(repo, orchestrator=True)
    assert plan.argv == ["mpirun", "--allow-run-as-root", "-n", "1", BINARY, *_server_flags(repo),
                         "--disable-auto-complete-config",
                         "--backend-config=python,shm-region-prefix-name=prefix0_", ":"]
    assert plan.env == {"TRTLLM_ORCHESTRATOR": "1", "TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES": "1"}
    assert plan.shell().startswith("TRTLLM_ORCHESTRATOR=1 TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES=1 mpirun ")


def test_orchestrator_on_newer_triton_gives_the_gpus_no_server_memory_pools():
    plan = launch.plan([BINARY], world_size=2, models=("tensorrt_llm",), orchestrator=True, gpus=2,
                       triton_version="25.03")
    assert plan.argv[4:9] == [BINARY, "--pinned-memory-pool-byte-size=0", "--enable-peer-access=false",
                              "--cuda-memory-pool-byte-size=0:0", "--cuda-memory-pool-byte-size=1:0"]
    assert "--pinned-memory-pool-byte-size=0" not in launch.plan(
        [BINARY], world_size=2, models=("tensorrt_llm",), orchestrator=True, gpus=2, triton_version="24.06").argv


def test_orchestrator_needs_a_tensorrtllm_model():
    with pytest.raises(QuantError, match="orchestrator mode needs a repository with a TensorRT-LLM"):
        launch.plan([BINARY], world_size=1, models=(), orchestrator=True)


def test_engine_config_is_read_as_the_runtime_reads_it(tmp_path):
    assert launch.engine_world(tmp_path).world_size == 1  # not built yet
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": {"tp_size": 4}}}))
    assert launch.engine_world(tmp_path).world_size == 4  # pp_size defaults to 1
    (tmp_path / "config.json").write_text(json.dumps({"pretrained_config": {"mapping": {"tp_size": "2"}}}))
    with pytest.raises(QuantError, match="not positive integers"):
        launch.engine_world(tmp_path)


def test_every_launch_fact_cites_upstream():
    table = launch.table()
    for name in type(table).model_fields:
        source = getattr(table, name).source
        assert source.repo in ("triton-inference-server/tensorrtllm_backend", "NVIDIA/TensorRT-LLM")
        assert source.tag or source.commit, name


def _cli(args):
    result = CliRunner().invoke(cli.app, args)
    return result.exit_code, result.output


def test_serve_print_command(tmp_path):
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    repo = _repo(tmp_path, 2, 2)
    code, text = _cli(["serve", str(repo), "--print-command", "--tritonserver", str(binary)])
    assert code == 0, text
    assert text.strip() == _plan(repo).shell().replace(BINARY, str(binary))
    assert text.count(" : ") == 3 and text.strip().endswith("prefix3_ :")


def test_missing_mpirun_is_one_line(tmp_path, monkeypatch):
    repo = _repo(tmp_path, 2, 1)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no mpirun anywhere
    assert shutil.which("mpirun") is None
    with pytest.raises(QuantError, match="world size 2 runs tritonserver under mpirun, which is not on PATH"):
        launch.check_runnable(_plan(repo))
    launch.check_runnable(_plan(_repo(tmp_path, 1, 1)))  # one GPU: no MPI needed
