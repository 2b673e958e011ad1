"""End to end against a real Triton server (the one bundled in nvidia-pytriton) serving the tiny quantized model.

One server for the whole module, started through `llm-quant serve` on free ports and stopped with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from llm_quant.runtime import load_quantized
from quant_common.errors import QuantError
from triton_backend.client import LLMClient
from triton_backend.server import free_port

PROMPTS = ["def f(x):", "The quick brown fox", "Python is a programming language", "for i in range(10):",
           "import os\nimport sys\n", "class Model:"]
CLI = str(Path(sys.executable).with_name("llm-quant"))


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory):
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    log = tmp_path_factory.mktemp("serve") / "serve.out"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [CLI, "serve", str(tiny_repo), "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
             "--metrics-port", str(ports["metrics"])], stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while b"ready:" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"llm-quant serve did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    yield {"http": f"127.0.0.1:{ports['http']}", "grpc": f"127.0.0.1:{ports['grpc']}", "ports": ports,
           "process": process, "log": log}
    # Clean shutdown on SIGTERM: exit code 0, "stopped", the server process gone.
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0, log.read_text()[-2000:]
    assert "stopped" in log.read_text()
    assert not _port_open(ports["http"])


def _port_open(port):
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def reference(tiny_repo):
    """The same quantized model in-process: plain transformers greedy generate, no Triton code involved."""
    import torch

    model, tokenizer = load_quantized(tiny_repo.parent / "embedded")

    def complete(prompt, max_tokens):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        return tokenizer.decode(new, skip_special_tokens=True), len(new)

    return complete


def test_greedy_through_triton_equals_in_process(server, reference):
    client = LLMClient(server["http"])
    for prompt in PROMPTS:
        result = client.generate(prompt, max_tokens=12)
        expected, count = reference(prompt, 12)
        assert result.text == expected, prompt
        assert result.tokens == count


def test_concurrent_requests_are_exact(server, reference):
    # 8 clients at once (HTTP and gRPC mixed): every answer is complete and exact.
    from concurrent.futures import ThreadPoolExecutor

    prompts = (PROMPTS * 2)[:8]

    def ask(index):
        client = LLMClient(server["grpc"], protocol="grpc") if index % 2 else LLMClient(server["http"])
        return client.generate(prompts[index], max_tokens=6 + index % 3).text

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(ask, range(8)))
    assert texts == [reference(prompts[i], 6 + i % 3)[0] for i in range(8)]


def test_streaming_http_and_grpc(server, reference):
    expected, count = reference(PROMPTS[0], 10)
    for url, protocol in ((server["http"], "http"), (server["grpc"], "grpc")):
        result = LLMClient(url, protocol=protocol).generate_streamed(PROMPTS[0], max_tokens=10)
        assert len(result.pieces) == count > 1, protocol  # one response per token, as they are generated
        assert result.text == expected
        assert result.first_token_s is not None and result.first_token_s <= result.latency_s
    # gRPC without streaming (decoupled model: collected from the stream) and the BLS model agree too.
    assert LLMClient(server["grpc"], protocol="grpc").generate(PROMPTS[1], max_tokens=8).text == reference(
        PROMPTS[1], 8)[0]
    assert LLMClient(server["http"], model="tensorrt_llm_bls").generate(PROMPTS[2], max_tokens=8).text == reference(
        PROMPTS[2], 8)[0]
    bls_stream = list(LLMClient(server["grpc"], protocol="grpc", model="tensorrt_llm_bls").stream(PROMPTS[2],
                                                                                                 max_tokens=8))
    assert "".join(bls_stream) == reference(PROMPTS[2], 8)[0] and len(bls_stream) > 1


def test_curl_style_request(server, reference):
    reply = requests.post(f"http://{server['http']}/v2/models/ensemble/generate",
                          data='{"text_input": "def f(x):", "max_tokens": 16}', timeout=60)
    assert reply.status_code == 200
    assert reply.json()["text_output"] == reference("def f(x):", 16)[0]


def test_cli_generate(server, reference):
    done = subprocess.run([CLI, "generate", PROMPTS[3], "--url", server["http"], "--max-tokens", "8"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference(PROMPTS[3], 8)[0] + "\n"
    streamed = subprocess.run([CLI, "generate", PROMPTS[3], "--url", server["grpc"], "--protocol", "grpc",
                               "--max-tokens", "8", "--stream"], capture_output=True, text=True, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == reference(PROMPTS[3], 8)[0] + "\n"


def _still_serving(server):
    assert LLMClient(server["http"]).generate("still there?", max_tokens=2).tokens == 2


def test_bad_requests_get_clear_errors_and_server_keeps_serving(server):
    url = f"http://{server['http']}/v2/models/ensemble/generate"
    missing = requests.post(url, json={"text_input": "hi"}, timeout=60)
    assert missing.status_code == 400 and "max_tokens" in missing.json()["error"]
    wrong_type = requests.post(url, json={"text_input": "hi", "max_tokens": "many"}, timeout=60)
    assert wrong_type.status_code >= 400 and "error" in wrong_type.json()
    not_text = requests.post(url, json={"text_input": 5, "max_tokens": 3}, timeout=60)
    assert not_text.status_code >= 400
    zero = requests.post(url, json={"text_input": "hi", "max_tokens": 0}, timeout=60)
    assert zero.status_code >= 400 and "max_tokens must be at least 1" in zero.json()["error"]
    _still_serving(server)
    for protocol in ("http", "grpc"):
        client = LLMClient(server[protocol], protocol=protocol)
        with pytest.raises(QuantError, match="at most 255 input tokens"):
            client.generate("word " * 400, max_tokens=4)
        with pytest.raises(QuantError, match="exceeds the model's maximum sequence length 256"):
            client.generate("word " * 40, max_tokens=200)
        with pytest.raises(QuantError, match="max_tokens must be a positive integer"):
            client.generate("hi", max_tokens="4")  # type: ignore[arg-type]
    _still_serving(server)


def test_cli_errors_are_one_line(server):
    over = subprocess.run([CLI, "generate", "word " * 400, "--url", server["http"], "--max-tokens", "4"],
                          capture_output=True, text=True, timeout=60)
    assert over.returncode == 2 and over.stderr.count("\n") == 1 and "at most 255 input tokens" in over.stderr
    stopped = subprocess.run([CLI, "generate", "hi", "--url", f"127.0.0.1:{free_port()}"], capture_output=True,
                             text=True, timeout=60)
    assert stopped.returncode == 2 and stopped.stderr.startswith("error: cannot reach Triton")
    assert "Traceback" not in stopped.stderr and stopped.stderr.count("\n") == 1
    taken = subprocess.run([CLI, "serve", str(Path(server["log"]).parent), "--http-port",
                            str(server["ports"]["http"])], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2
    _still_serving(server)


def test_serve_rejects_taken_port(server, tiny_repo):
    taken = subprocess.run([CLI, "serve", str(tiny_repo), "--http-port", str(server["ports"]["http"]),
                            "--grpc-port", str(free_port()), "--metrics-port", str(free_port())],
                           capture_output=True, text=True, timeout=60)
    assert taken.returncode == 2
    assert f"HTTP port {server['ports']['http']} on 127.0.0.1 is already in use" in taken.stderr
    assert server["process"].poll() is None and os.path.exists(tiny_repo)


def _upstream_client_request(url, model, prompt, max_tokens, *, stream, outputs=("text_output",), **extra):
    """What tensorrtllm_backend v0.19.0's end_to_end_grpc_client.py sends (prepare_inputs: text_input, max_tokens,
    stream, beam_width, temperature, exclude_input_in_output always) over the gRPC stream; returns its replies."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    values = {"text_input": np.array([[prompt.encode()]], dtype=object),
              "max_tokens": np.array([[max_tokens]], dtype=np.int32), "stream": np.array([[stream]], dtype=bool),
              "beam_width": np.array([[1]], dtype=np.int32), "temperature": np.array([[1.0]], dtype=np.float32),
              "exclude_input_in_output": np.array([[True]], dtype=bool)}
    values.update({name: value if isinstance(value, np.ndarray) else
                   np.array([[value]], dtype=type(value) if not isinstance(value, int) else np.int32)
                   for name, value in extra.items()})
    inputs = []
    for name, array in values.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object
                                       else np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    replies: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: replies.put(error or result))
    client.async_stream_infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(name) for name in outputs])
    client.stop_stream()
    client.close()
    return [replies.get() for _ in range(replies.qsize())]


def test_upstream_client_inputs_get_text_or_one_clear_line(server, reference):
    """Item 0: the ensemble and BLS accept every input upstream's client sends; text_output is a flat array
    (the client reads text_output[0] as bytes); an input we cannot honour is refused by name."""
    expected, _ = reference(PROMPTS[1], 6)
    for model in ("ensemble", "tensorrt_llm_bls"):
        for stream in (False, True):
            replies = _upstream_client_request(server["grpc"], model, PROMPTS[1], 6, stream=stream)
            texts = [r.as_numpy("text_output") for r in replies if r.as_numpy("text_output") is not None]
            assert all(t.ndim == 1 and isinstance(t[0], bytes) for t in texts), (model, stream)
            assert "".join(t[0].decode() for t in texts) == expected, (model, stream)
        refused = _upstream_client_request(server["grpc"], model, PROMPTS[1], 6, stream=False, beam_width=2)
        assert "input beam_width=2 is not supported by" in str(refused[0]) and "send 1" in str(refused[0])
        refused = _upstream_client_request(server["grpc"], model, PROMPTS[1], 6, stream=False,
                                           num_return_sequences=3)
        assert "num_return_sequences=3 is not supported" in str(refused[0])
    _still_serving(server)


@pytest.fixture(scope="module")
def biased_reference(tiny_repo):
    """Greedy generation with a bias added to every step's logits through transformers' own logits-processor
    hook (not the runtime's code): what TensorRT-LLM's embedding_bias does."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    model, tokenizer = load_quantized(tiny_repo.parent / "embedded")

    class AddBias(LogitsProcessor):
        def __init__(self, bias):
            self.bias = bias

        def __call__(self, input_ids, scores):
            return scores + self.bias

    def complete(prompt, max_tokens, word, weight):
        bias = torch.zeros(model.config.vocab_size)
        bias[tokenizer.encode(word, add_special_tokens=False)] += weight
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, logits_processor=LogitsProcessorList([AddBias(bias)]))
        new = out[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[: new.index(tokenizer.eos_token_id)]
        return tokenizer.decode(new, skip_special_tokens=True)

    return complete


def test_upstream_outputs_and_embedding_bias(server, reference, biased_reference):
    """Item 21.12: the ensemble and BLS declare upstream's outputs (a client asking for cum_log_probs is served;
    the output is left out, as upstream's backend does while return_log_probs is off); asking this runtime to
    fill them is refused by name; embedding_bias_words/weights reach the runtime."""
    import numpy as np

    expected, _ = reference(PROMPTS[1], 6)
    for model in ("ensemble", "tensorrt_llm_bls"):
        replies = _upstream_client_request(server["grpc"], model, PROMPTS[1], 6, stream=False,
                                           outputs=("text_output", "cum_log_probs", "output_log_probs",
                                                    "context_logits", "generation_logits"))
        texts = [r.as_numpy("text_output") for r in replies if not isinstance(r, Exception)
                 and r.as_numpy("text_output") is not None]
        assert "".join(t[0].decode() for t in texts) == expected, (model, replies)
        assert all(r.as_numpy("cum_log_probs") is None for r in replies)
        refused = _upstream_client_request(server["grpc"], model, PROMPTS[1], 6, stream=False,
                                           return_log_probs=np.array([[True]]))
        assert "input return_log_probs=True is not supported by" in str(refused[0])
    word, weight = "class", 40.0
    biased = biased_reference(PROMPTS[0], 8, word, weight)
    assert biased != reference(PROMPTS[0], 8)[0]  # the bias changes the answer
    reply = requests.post(f"http://{server['http']}/v2/models/ensemble/generate", timeout=60, json={
        "text_input": PROMPTS[0], "max_tokens": 8, "embedding_bias_words": [word], "embedding_bias_weights": [weight]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["text_output"] == biased
    replies = _upstream_client_request(server["grpc"], "tensorrt_llm_bls", PROMPTS[0], 8, stream=True,
                                       embedding_bias_words=np.array([[word.encode()]], dtype=object),
                                       embedding_bias_weights=np.array([[weight]], dtype=np.float32))
    assert "".join(r.as_numpy("text_output")[0].decode() for r in replies
                   if r.as_numpy("text_output") is not None) == biased
    mismatched = requests.post(f"http://{server['http']}/v2/models/ensemble/generate", timeout=60, json={
        "text_input": PROMPTS[0], "max_tokens": 4, "embedding_bias_words": [word, "def"],
        "embedding_bias_weights": [weight]})
    assert mismatched.status_code >= 400
    assert "embedding_bias_words has 2 entries but embedding_bias_weights has 1" in mismatched.json()["error"]
    _still_serving(server)
