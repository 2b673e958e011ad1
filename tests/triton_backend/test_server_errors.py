"""Server start failures are one clear line: a model that cannot load, a bad repository, no server at all."""

from __future__ import annotations

import json
import shutil

import pytest

from quant_common.errors import QuantError
from triton_backend.repository import package_for_build
from triton_backend.server import TritonServer, check_repository, find_tritonserver, free_port, stub_python


def _server(repo, tmp_path):
    return TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                        log_file=tmp_path / "triton.log", ready_timeout_s=120)


def test_model_that_cannot_load_is_named(tiny_build, tmp_path):
    # The C++ TensorRT-LLM backend is not installed here, so Triton cannot load this model: the error must say
    # which model and why, and point at the log.
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"build_config": {"max_input_len": 16, "max_seq_len": 32}}))
    full = package_for_build(tiny_build, engine_dir=engine, out=tmp_path / "full").path
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(full / "tensorrt_llm", repo / "tensorrt_llm")
    server = _server(repo, tmp_path)
    with pytest.raises(QuantError, match=r"model 'tensorrt_llm' failed to load: .*tensorrtllm") as info:
        server.start()
    assert "\n" not in str(info.value) and str(tmp_path / "triton.log") in str(info.value)
    assert not server.alive()


def test_bad_repositories(tmp_path):
    with pytest.raises(QuantError, match="does not exist"):
        check_repository(tmp_path / "missing")
    with pytest.raises(QuantError, match="holds no model"):
        check_repository(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text('name: "m"\nbackend: "python"\nmax_batch_size: ${x}\n')
    with pytest.raises(QuantError, match="unfilled template placeholder"):
        _server(tmp_path, tmp_path).start()


def test_explicit_binary_must_exist(tmp_path):
    with pytest.raises(QuantError, match="is not an executable tritonserver"):
        find_tritonserver(tmp_path / "tritonserver")


def test_stub_python_comes_first_on_the_servers_path(tmp_path, monkeypatch):
    # The python-backend stub ignores PYTHONPATH and takes its packages from the first python3 on PATH, so
    # TQ_TRITON_PYTHON must put its folder (not the link's target) ahead of everything else.
    venv_bin = tmp_path / "stubenv" / "bin"
    venv_bin.mkdir(parents=True)
    python = venv_bin / "python3"
    python.symlink_to(shutil.which("python3") or "/usr/bin/python3")
    monkeypatch.setenv("TQ_TRITON_PYTHON", str(python))
    assert stub_python() == python
    server = find_tritonserver(None)
    env = _server(tmp_path, tmp_path).environment(server)
    assert env["PATH"].split(":")[0] == str(venv_bin)
    monkeypatch.setenv("TQ_TRITON_PYTHON", str(tmp_path / "nope"))
    with pytest.raises(QuantError, match="TQ_TRITON_PYTHON=.*nope is not an executable python") as info:
        stub_python()
    assert "\n" not in str(info.value)
