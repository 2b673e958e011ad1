"""``llm-quant serve`` with the pytorch runtime on the GPU: Triton's python backend holds the quantized model on
CUDA and answers ``generate`` with the same greedy text as the model in-process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from llm_quant.pipeline import build, make_config
from llm_quant.runtime import load_quantized
from triton_backend.client import LLMClient
from triton_backend.server import free_port

PROMPTS = ["The quick brown fox", "def f(x):", "import os", "class Model:", "Python is", "for i in range(",
           "Return the value", "A list of"]
MAX_TOKENS = 12
# The python-backend stub of the Triton build bundled in nvidia-pytriton breaks BYTES tensors under numpy 2
# (FACTS §5) and ignores PYTHONPATH; scripts/gpu_check.sh makes a venv holding numpy<2 and names it in
# TQ_TRITON_PYTHON, which the server puts first on the stub's PATH.


@pytest.fixture(scope="module")
def gpu_build(gpu_llama, tmp_path_factory):
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (the bundled tritonserver) is not installed")
    out = tmp_path_factory.mktemp("serve") / "build"
    cfg = make_config(str(gpu_llama), overrides={"out": out, "device": "cuda", "qformat": "fp8",
                                                 "build_engine": False, "triton_runtime": "pytorch"},
                      calib={"size": 8, "seq_len": 128, "batch_size": 4}, eval_opts={"seq_len": 128,
                                                                                     "max_tokens": 1024})[0]
    build(cfg)
    return out


@pytest.fixture(scope="module")
def server(gpu_build, tmp_path_factory):
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = tmp_path_factory.mktemp("serve-log") / "serve.out"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_quant.cli", "serve", str(gpu_build / "triton_repo"),
             "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
             "--metrics-port", str(ports["metrics"])], stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while b"ready:" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            server_log = gpu_build / "tritonserver.log"
            detail = server_log.read_text(errors="replace")[-4000:] if server_log.is_file() else ""
            pytest.fail(f"llm-quant serve did not come up: {log.read_text()[-2000:]}\n{detail}")
        time.sleep(0.5)
    yield {"http": f"127.0.0.1:{ports['http']}", "log": log, "repo": gpu_build / "triton_repo"}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, log.read_text()[-2000:]


def test_generate_from_a_gpu_resident_model_equals_in_process(server, gpu_build):
    import torch

    model, tokenizer = load_quantized(gpu_build / "embedded", device="cuda")
    client = LLMClient(server["http"])
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)], device="cuda")
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        expected = tokenizer.decode(new, skip_special_tokens=True)
        assert client.generate(prompt, max_tokens=MAX_TOKENS).text == expected, prompt
    logs = server["log"].read_text() + "".join(p.read_text(errors="replace")
                                               for p in server["repo"].parent.glob("*.log"))
    assert " on cuda" in logs  # the pytorch runtime's load line: the model is on the GPU
