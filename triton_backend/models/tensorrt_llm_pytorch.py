"""Triton python-backend model ``tensorrt_llm`` for ``--runtime pytorch``: the modelopt-quantized model in PyTorch.

Same inputs/outputs and meaning as the TensorRT-LLM backend's ``tensorrt_llm`` model, so the ensemble and the
BLS model work unchanged. Needs this project installed on the server side (``llm_quant.runtime`` restores the
quantized model from the build's ``embedded/`` folder; ``triton_backend.generation`` decodes).
Quantized linears run real int8 kernels on CPU (``llm_quant.runtime.cpu.int8_linear``; the log line at load says
which); parameter ``kernels: fake`` keeps modelopt's fake quantization. With ``batch_requests`` (on by default:
faster with the int8 kernels), concurrent greedy requests share one batched ``generate`` call; otherwise requests
run one after another.
"""

import importlib
import json
import locale
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def _utf8_locale():
    """The stub embeds Python without its locale setup, so open() would default to ASCII; torch reads UTF-8
    templates at import. Switch the C locale to UTF-8 before importing it."""
    for name in ("", "C.UTF-8", "C.utf8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
        if "utf" in (locale.getencoding() if hasattr(locale, "getencoding") else
                     locale.getpreferredencoding(False)).lower():
            return


def _parameters(config):
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _resolve(path, args):
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(args["model_repository"]), path))


def _scalar(request, name, row, default, cast):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return cast(tensor.as_numpy().reshape(-1)[row])


def _refuse_unsupported(request, unsupported, who):
    """Upstream inputs this model declares but cannot honour: accepted unset, empty or at their neutral value
    (``unsupported`` maps name -> neutral value, None = must be empty); any other value is refused, one line."""
    for name, neutral in unsupported.items():
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            continue
        values = tensor.as_numpy().reshape(-1).tolist()
        if neutral is None and all(v in (b"", "") for v in values):
            continue
        if neutral is not None and all(v == neutral for v in values):
            continue
        shown = values[0] if len(values) == 1 else f"<{len(values)} values>"
        allowed = "leave it unset" + ("" if neutral is None else f" or send {json.dumps(neutral)}")
        raise ValueError(f"input {name}={shown!r} is not supported by {who}: {allowed}")


class TritonPythonModel:
    def initialize(self, args):
        _utf8_locale()
        import torch

        from triton_backend.generation import (
            Sampling,
            batchable,
            fold_quantized_weights,
            generate_batch,
            generate_ids,
            words_from_tensor,
        )

        self._sampling, self._generate, self._words = Sampling, generate_ids, words_from_tensor
        self._batchable, self._generate_batch = batchable, generate_batch
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        params = _parameters(config)
        threads = int(params.get("torch_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        module_name, _, function = params.get("runtime_loader", "llm_quant.runtime:load_quantized").partition(":")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        extra = {"kernels": params["kernels"]} if params.get("kernels") else {}  # "int8" (default) or "fake"
        try:
            loader = getattr(importlib.import_module(module_name), function)
            self.model, tokenizer = loader(_resolve(params["embedded_dir"], args), device=device, **extra)
        except Exception as exc:  # a package missing on the server side: say where this interpreter looked
            if not isinstance(exc, ImportError) and "cannot be imported" not in str(exc):
                raise
            raise RuntimeError(f"{exc} [python {sys.version.split()[0]} at {sys.prefix}; sys.path {sys.path}]") from exc
        self.model.eval()
        report = getattr(self.model, "kernel_report", None)
        line = (f"tensorrt_llm (pytorch runtime): {report.summary() if report else 'fake-quant'} on {device}, "
                f"{torch.get_num_threads()} threads")
        logger = getattr(pb_utils, "Logger", None)
        logger.log_info(line) if logger is not None else print(line, flush=True)
        self.batch_requests = params.get("batch_requests", "true").lower() == "true"
        if params.get("fold_weights", "true").lower() == "true":
            fold_quantized_weights(self.model)
        self.max_seq_len = int(params.get("max_seq_len", "0")) or None
        self.exclude_input = params.get("exclude_input_in_output", "true").lower() == "true"
        # Per backend version: our sampling names -> the ones this repository declares (seed -> random_seed ...).
        self.names = json.loads(params.get("input_names", "{}"))
        self.unsupported = json.loads(params.get("unsupported_inputs", "{}"))
        self.default_end_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.default_pad_id = pad if pad is not None else self.default_end_id

    def execute(self, requests):
        senders = [request.get_response_sender() if self.decoupled else None for request in requests]
        replies = [None] * len(requests)
        jobs = {}
        for index, request in enumerate(requests):
            try:
                jobs[index] = self._parse(request)
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the client, never kills the model
                replies[index] = self._error(exc)
        # With batch_requests, concurrent greedy requests share one batched generate (queued by the dynamic batcher).
        single = [i for i, job in jobs.items() if len(job["rows"]) == 1]
        if self.batch_requests and self._batchable([jobs[i]["rows"][0][1] for i in single]):
            try:
                self._run_batch([jobs[i] for i in single], [senders[i] for i in single])
                for i in single:
                    replies[i] = self._reply(jobs.pop(i))
            except Exception as exc:  # noqa: BLE001
                for i in single:
                    jobs.pop(i)
                    replies[i] = self._error(exc)
        for index, job in jobs.items():
            try:
                self._run_rows(job, senders[index])
                replies[index] = self._reply(job)
            except Exception as exc:  # noqa: BLE001
                replies[index] = self._error(exc)
        if not self.decoupled:
            return replies
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for sender, reply in zip(senders, replies, strict=True):
            if reply is None:  # streamed: every token went out already; only close the stream
                sender.send(flags=final)
            else:
                sender.send(reply, flags=final)
        return None

    @staticmethod
    def _error(exc):
        message = str(exc) if isinstance(exc, ValueError) else f"{exc.__class__.__name__}: {exc}"
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

    @staticmethod
    def _tokens_response(tokens):
        ids = np.array([[tokens]], dtype=np.int32).reshape(1, 1, len(tokens))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("output_ids", ids),
            pb_utils.Tensor("sequence_length", np.array([[len(tokens)]], dtype=np.int32)),
        ])

    def _options(self, request, row, max_new):
        stop = pb_utils.get_input_tensor_by_name(request, "stop_words_list")
        bad = pb_utils.get_input_tensor_by_name(request, "bad_words_list")
        seed = pb_utils.get_input_tensor_by_name(request, self.names.get("seed", "seed"))
        bias = pb_utils.get_input_tensor_by_name(request, "embedding_bias")
        bias = None if bias is None else bias.as_numpy()
        bias = bias.reshape(bias.shape[0], -1)[row] if bias is not None and bias.size else None  # [batch, 0]: none
        return self._sampling(
            max_new_tokens=max_new,
            end_id=_scalar(request, "end_id", row, self.default_end_id, int),
            pad_id=_scalar(request, "pad_id", row, self.default_pad_id, int),
            temperature=_scalar(request, "temperature", row, 1.0, float),
            top_k=_scalar(request, "runtime_top_k", row, 0, int),
            top_p=_scalar(request, "runtime_top_p", row, 0.0, float),
            repetition_penalty=_scalar(request, "repetition_penalty", row, 1.0, float),
            min_tokens=_scalar(request, self.names.get("min_tokens", "min_tokens"), row, 0, int),
            seed=None if seed is None else int(seed.as_numpy().reshape(-1)[row]),
            stop_words=self._words(stop.as_numpy()[row]) if stop is not None else [],
            bad_words=self._words(bad.as_numpy()[row]) if bad is not None else [],
            embedding_bias=None if bias is None else bias.astype(np.float32).tolist(),
        )

    def _parse(self, request):
        _refuse_unsupported(request, self.unsupported, "the embedded PyTorch runtime (--runtime tensorrtllm implements it)")
        input_ids = pb_utils.get_input_tensor_by_name(request, "input_ids")
        if input_ids is None:
            raise ValueError("input_ids is missing: this decoder-only model needs the prompt's token ids")
        input_ids = input_ids.as_numpy()
        input_ids = input_ids.reshape(1, -1) if input_ids.ndim == 1 else input_ids
        batch = input_ids.shape[0]
        lengths = pb_utils.get_input_tensor_by_name(request, "input_lengths").as_numpy().reshape(-1)
        output_len = pb_utils.get_input_tensor_by_name(request, "request_output_len").as_numpy().reshape(-1)
        streaming = _scalar(request, "streaming", 0, False, bool)
        if streaming and not self.decoupled:
            raise ValueError("streaming needs a decoupled model: repackage with triton.decoupled true")
        if streaming and batch != 1:
            raise ValueError("streaming serves one prompt per request")
        rows = []
        for row in range(batch):
            prompt = [int(t) for t in input_ids[row, : int(lengths[row])]]
            max_new = int(output_len[row])
            if max_new < 1:
                raise ValueError(f"request_output_len must be at least 1, got {max_new}")
            if self.max_seq_len and len(prompt) + max_new > self.max_seq_len:
                raise ValueError(f"prompt ({len(prompt)} tokens) + max_tokens ({max_new}) exceeds the model's "
                                 f"maximum sequence length {self.max_seq_len}: shorten the prompt or ask for fewer "
                                 "tokens")
            rows.append((prompt, self._options(request, row, max_new)))
        return {"rows": rows, "streaming": streaming, "results": [],
                "exclude": _scalar(request, "exclude_input_in_output", 0, self.exclude_input, bool),
                "cancelled": getattr(request, "is_cancelled", None)}

    def _run_rows(self, job, sender):
        for prompt, options in job["rows"]:
            on_token = None
            if job["streaming"]:
                def on_token(token):
                    sender.send(self._tokens_response([token]))
            job["results"].append(self._generate(self.model, prompt, options, on_token=on_token,
                                                 cancelled=job["cancelled"]))

    def _run_batch(self, jobs, senders):
        def on_token(row, token):
            if jobs[row]["streaming"]:
                senders[row].send(self._tokens_response([token]))

        results = self._generate_batch(self.model, [job["rows"][0][0] for job in jobs],
                                       [job["rows"][0][1] for job in jobs], on_token=on_token)
        for job, generated in zip(jobs, results, strict=True):
            job["results"].append(generated)

    def _reply(self, job):
        if job["streaming"]:
            return None
        results = [generated if job["exclude"] else prompt + generated
                   for (prompt, _), generated in zip(job["rows"], job["results"], strict=True)]
        width = max([1] + [len(r) for r in results])
        ids = np.full((len(results), 1, width), self.default_end_id, dtype=np.int32)
        for row, tokens in enumerate(results):
            ids[row, 0, : len(tokens)] = tokens
        seq = np.array([[len(r)] for r in results], dtype=np.int32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("output_ids", ids),
                                                          pb_utils.Tensor("sequence_length", seq)])
