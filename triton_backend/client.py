"""Python client for the served LLM: HTTP ``generate``/``generate_stream`` and gRPC streaming (tritonclient).

    client = LLMClient("127.0.0.1:8000")                       # HTTP generate endpoint
    print(client.generate("What is INT8?", max_tokens=32).text)
    for piece in LLMClient("127.0.0.1:8001", protocol="grpc").stream("What is INT8?", max_tokens=32):
        print(piece, end="", flush=True)

Models answering the ensemble interface (``ensemble``, ``tensorrt_llm_bls``) and the LLM-API model
(``tensorrt_llm`` of ``--runtime llmapi``) are both understood; which one a model is comes from its metadata.
Every failure is a ``QuantError`` with one line: unreachable server, rejected request, model error.
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from quant_common.errors import QuantError, require
from triton_backend.interface import LLMAPI_REQUEST, REQUEST_NUMPY_TYPES, ensemble_request, family_of_inputs

Protocol = Literal["http", "grpc"]


@dataclass
class Generation:
    text: str
    tokens: int | None  # generated tokens, where the model reports them (ensemble: sequence_length)
    latency_s: float
    first_token_s: float | None = None
    pieces: list[str] = field(default_factory=list)


def _check_request(prompt: Any, max_tokens: Any, options: dict[str, Any]) -> None:
    """Reject wrong types here with a precise line instead of Triton's JSON parser message."""
    if not isinstance(prompt, str) or not prompt:
        raise QuantError("the prompt must be a non-empty string", "pass the text to complete")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise QuantError(f"max_tokens must be a positive integer, got {max_tokens!r}", "pass e.g. --max-tokens 32")
    for name in ("top_k", "seed"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise QuantError(f"{name} must be a non-negative integer, got {value!r}", f"fix --{name.replace('_', '-')}")
    for name in ("temperature", "top_p"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise QuantError(f"{name} must be a non-negative number, got {value!r}", f"fix --{name.replace('_', '-')}")


def _server_message(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        return str(json.loads(text).get("error", text)).strip()
    except (ValueError, AttributeError):
        return text.strip()[:300]


class LLMClient:
    """One connection to a served LLM model. ``url`` is host:port of the HTTP or gRPC endpoint."""

    def __init__(self, url: str = "127.0.0.1:8000", *, protocol: Protocol = "http", model: str = "ensemble",
                 timeout_s: float = 300.0) -> None:
        if protocol not in ("http", "grpc"):
            raise QuantError(f"unknown protocol {protocol!r}", "use http or grpc")
        self.url = url.removeprefix("http://").removeprefix("https://").rstrip("/")
        self.protocol = protocol
        self.model = model
        self.timeout_s = timeout_s
        self._names: dict[str, str] | None = None
        self._session: Any = None

    # --- plumbing ------------------------------------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> QuantError:
        return QuantError(f"cannot reach Triton at {self.protocol}://{self.url} ({exc.__class__.__name__})",
                          "start it with `llm-quant serve REPO` or pass the right --url/--protocol")

    def _http(self) -> Any:
        if self._session is None:
            requests = require("requests", purpose="the HTTP client")
            self._session = requests.Session()
        return self._session

    def _names_for_model(self) -> dict[str, str]:
        if self._names is None:
            inputs = self._input_names()
            if "text_input" not in inputs:
                raise QuantError(f"model {self.model!r} takes no text_input (inputs: {', '.join(sorted(inputs))})",
                                 "choose --model ensemble or tensorrt_llm_bls")
            # The ensemble's sampling names depend on the backend version it was rendered for (seed / random_seed).
            self._names = (LLMAPI_REQUEST if "sampling_param_max_tokens" in inputs
                           else ensemble_request(family_of_inputs(inputs)))
        return self._names

    def _input_names(self) -> set[str]:
        if self.protocol == "http":
            requests = require("requests", purpose="the HTTP client")
            try:
                reply = self._http().get(f"http://{self.url}/v2/models/{self.model}", timeout=10)
            except requests.RequestException as exc:
                raise self._unreachable(exc) from exc
            if reply.status_code != 200:
                raise QuantError(f"model {self.model!r} is not available: {_server_message(reply.content)}",
                                 "check --model (llm-quant serve lists the loaded models)")
            return {i["name"] for i in reply.json().get("inputs", [])}
        grpcclient = require("tritonclient.grpc", purpose="the gRPC client", install="pip install 'tritonclient[grpc]'")
        utils = require("tritonclient.utils", purpose="the gRPC client")
        try:
            meta = grpcclient.InferenceServerClient(self.url).get_model_metadata(self.model, as_json=True)
        except utils.InferenceServerException as exc:
            if "unavailable" in str(exc).lower() or "connect" in str(exc).lower():
                raise self._unreachable(exc) from exc
            raise QuantError(f"model {self.model!r} is not available: {exc.message()}", "check --model") from exc
        return {i["name"] for i in meta.get("inputs", [])}

    def _fields(self, prompt: str, max_tokens: int, stream: bool, options: dict[str, Any]) -> dict[str, Any]:
        _check_request(prompt, max_tokens, options)
        names = self._names_for_model()
        body: dict[str, Any] = {"text_input": prompt, names["max_tokens"]: max_tokens}
        if stream:
            body[names["stream"]] = True
        for key, value in options.items():
            if value is None:
                continue
            if key not in names:
                raise QuantError(f"model {self.model!r} does not take {key}", "drop that option")
            body[names[key]] = value
        return body

    # --- public API ----------------------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when the server answers and reports ready."""
        try:
            if self.protocol == "http":
                return int(self._http().get(f"http://{self.url}/v2/health/ready", timeout=5).status_code) == 200
            grpcclient = require("tritonclient.grpc", purpose="the gRPC client")
            return bool(grpcclient.InferenceServerClient(self.url).is_server_ready())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    def generate(self, prompt: str, *, max_tokens: int = 64, **options: Any) -> Generation:
        """The whole completion in one response (HTTP ``generate``; on gRPC the stream is collected)."""
        if self.protocol == "grpc":
            return self._collect(self.stream_events(prompt, max_tokens=max_tokens, stream=False, **options))
        requests = require("requests", purpose="the HTTP client")
        body = self._fields(prompt, max_tokens, False, options)
        start = time.perf_counter()
        try:
            reply = self._http().post(f"http://{self.url}/v2/models/{self.model}/generate", json=body,
                                      timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise self._unreachable(exc) from exc
        if reply.status_code != 200:
            raise QuantError(f"Triton rejected the request: {_server_message(reply.content)}",
                             "fix the request (see the message) and retry")
        data = reply.json()
        return Generation(text=_as_text(data.get("text_output")), tokens=_as_count(data.get("sequence_length")),
                          latency_s=time.perf_counter() - start)

    def stream(self, prompt: str, *, max_tokens: int = 64, **options: Any) -> Iterator[str]:
        """Text pieces as the model produces them (HTTP ``generate_stream`` or gRPC bidirectional stream)."""
        for piece, _ in self.stream_events(prompt, max_tokens=max_tokens, **options):
            yield piece

    def stream_events(self, prompt: str, *, max_tokens: int = 64, stream: bool = True,
                      **options: Any) -> Iterator[tuple[str, int | None]]:
        """(text piece, tokens in it) per response."""
        body = self._fields(prompt, max_tokens, stream, options)
        if self.protocol == "http":
            yield from self._http_stream(body)
        else:
            yield from self._grpc_stream(body)

    def _collect(self, events: Iterator[tuple[str, int | None]]) -> Generation:
        start = time.perf_counter()
        pieces, tokens, first = [], 0, None
        counted = True
        for piece, count in events:
            first = first if first is not None else time.perf_counter() - start
            pieces.append(piece)
            if count is None:
                counted = False
            else:
                tokens += count
        return Generation(text="".join(pieces), tokens=tokens if counted else None,
                          latency_s=time.perf_counter() - start, first_token_s=first, pieces=pieces)

    def generate_streamed(self, prompt: str, *, max_tokens: int = 64, **options: Any) -> Generation:
        """Stream, but return the whole result with time to first token (used by the benchmark)."""
        return self._collect(self.stream_events(prompt, max_tokens=max_tokens, **options))

    def _http_stream(self, body: dict[str, Any]) -> Iterator[tuple[str, int | None]]:
        requests = require("requests", purpose="the HTTP client")
        try:
            reply = self._http().post(f"http://{self.url}/v2/models/{self.model}/generate_stream", json=body,
                                      stream=True, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise self._unreachable(exc) from exc
        with reply:
            if reply.status_code != 200:
                raise QuantError(f"Triton rejected the request: {_server_message(reply.content)}",
                                 "fix the request (see the message) and retry")
            for line in reply.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise QuantError(f"Triton failed the request: {str(event['error']).strip()}",
                                     "fix the request (see the message) and retry")
                if "text_output" in event:
                    yield _as_text(event["text_output"]), _as_count(event.get("sequence_length"))

    def _grpc_stream(self, body: dict[str, Any]) -> Iterator[tuple[str, int | None]]:
        np = require("numpy", purpose="the gRPC client")
        grpcclient = require("tritonclient.grpc", purpose="the gRPC client", install="pip install 'tritonclient[grpc]'")
        utils = require("tritonclient.utils", purpose="the gRPC client")
        inputs = []
        for name, value in body.items():
            key = next((k for k, v in self._names_for_model().items() if v == name), name)
            if isinstance(value, str) or (isinstance(value, list) and key in ("stop_words", "bad_words")):
                values = [value] if isinstance(value, str) else value
                array = np.array([[v.encode("utf-8") for v in values]], dtype=object)
                dtype = "BYTES"
            else:
                array = np.array([[value]], dtype=REQUEST_NUMPY_TYPES.get(key, "int32"))
                dtype = utils.np_to_triton_dtype(array.dtype)
            if self._names is LLMAPI_REQUEST:
                array = array.reshape(array.shape[1:])  # the LLM-API model has no batch dimension
            tensor = grpcclient.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        replies: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(self.url)
        try:
            client.start_stream(callback=lambda result, error: replies.put((result, error)),
                                stream_timeout=self.timeout_s)
            client.async_stream_infer(self.model, inputs, enable_empty_final_response=True)
            while True:
                try:
                    result, error = replies.get(timeout=self.timeout_s)
                except queue.Empty as exc:
                    raise QuantError(f"no answer from Triton within {self.timeout_s:.0f} s",
                                     "check the server log, or raise the client timeout") from exc
                if error is not None:
                    message = error.message() if hasattr(error, "message") else str(error)
                    if "unavailable" in message.lower() or "failed to connect" in message.lower():
                        raise self._unreachable(error)
                    raise QuantError(f"Triton failed the request: {message.strip()}",
                                     "fix the request (see the message) and retry")
                response = result.get_response()
                text = result.as_numpy("text_output")
                if text is not None and text.size:
                    lengths = result.as_numpy("sequence_length")
                    yield _as_text(text.reshape(-1).tolist()), (int(lengths.sum()) if lengths is not None else None)
                if response.parameters["triton_final_response"].bool_param:
                    return
        except utils.InferenceServerException as exc:
            raise self._unreachable(exc) from exc
        finally:
            client.stop_stream(cancel_requests=True)
            client.close()


def _as_text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(_as_text(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _as_count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, list):
        return int(sum(_as_count(v) or 0 for v in value))
    return int(value)
