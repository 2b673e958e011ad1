"""Triton python-backend model ``tensorrt_llm`` for ``--runtime llmapi``: TensorRT-LLM's LLM API (PyTorch backend).

Reads ``model.yaml`` beside this file (or ``$LLM_CONFIG_PATH``) as upstream's llmapi model does: its
``triton_config`` section sets ``max_batch_size`` and ``decoupled`` (``auto_complete_config``); every other key is
an ``LLM()`` argument, converted with ``update_llm_args_with_extra_dict`` where TensorRT-LLM has it (dict sections
such as ``kv_cache_config`` become their config classes); ``backend: pytorch`` selects the PyTorch backend's
``LLM`` (``tensorrt_llm._torch.llm`` on 0.19/0.20, where ``tensorrt_llm.LLM`` is the TensorRT-engine one).
Inputs follow TensorRT-LLM's ``llmapi`` model: ``text_input``, ``streaming``, ``sampling_param_*``; outputs
``text_output`` and ``finish_reason``. Needs ``tensorrt_llm`` (NVIDIA's tritonserver ``*-trtllm-python-py3``
image); written by ``llm-quant package``. The names used here are rows of triton_backend/upstream/llmapi.yaml.
"""

import importlib
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
import yaml

SAMPLING = {"sampling_param_max_tokens": ("max_tokens", int), "sampling_param_temperature": ("temperature", float),
            "sampling_param_top_k": ("top_k", int), "sampling_param_top_p": ("top_p", float),
            "sampling_param_seed": ("seed", int)}
CONFIG_ENV, CONFIG_FILE = "LLM_CONFIG_PATH", "model.yaml"
EXTRA_DICT = ("tensorrt_llm.llmapi.llm_utils", "update_llm_args_with_extra_dict")
PYTORCH_LLM = ("tensorrt_llm._torch.llm", "LLM", "pytorch")  # (module, class, the model.yaml backend choosing it)


def _model_yaml():
    path = os.environ.get(CONFIG_ENV) or os.path.join(os.path.dirname(os.path.abspath(__file__)), CONFIG_FILE)
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def _attribute(module, name):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _llm_args(config):
    args = {key: value for key, value in config.items() if key != "triton_config"}
    convert = _attribute(*EXTRA_DICT)
    return convert({}, args) if convert is not None else args


def _llm_class(args):
    if args.get("backend") == PYTORCH_LLM[2]:
        pytorch_llm = _attribute(PYTORCH_LLM[0], PYTORCH_LLM[1])
        if pytorch_llm is not None:
            return pytorch_llm
    from tensorrt_llm import LLM  # later releases: one LLM class, the PyTorch backend by default

    return LLM


def _first(request, name, cast):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else cast(tensor.as_numpy().reshape(-1)[0])


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    @classmethod
    def auto_complete_config(cls, auto_complete_model_config):
        triton_config = _model_yaml().get("triton_config") or {}
        if "decoupled" in triton_config:
            auto_complete_model_config.set_model_transaction_policy(dict(decoupled=bool(triton_config["decoupled"])))
        if "max_batch_size" in triton_config:
            auto_complete_model_config.set_max_batch_size(int(triton_config["max_batch_size"]))
        return auto_complete_model_config

    def initialize(self, args):
        from tensorrt_llm import SamplingParams

        self._sampling_params = SamplingParams
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        llm_args = _llm_args(_model_yaml())
        self.llm = _llm_class(llm_args)(**llm_args)

    def execute(self, requests):
        responses = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else None
            try:
                response = self._serve(request, sender)
            except Exception as exc:  # noqa: BLE001 - report to the client, keep serving
                response = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
            if sender is None:
                responses.append(response)
            elif response is None:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None if self.decoupled else responses

    @staticmethod
    def _response(text, reason):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=object)),
            pb_utils.Tensor("finish_reason", np.array([str(reason or "").encode("utf-8")], dtype=object)),
        ])

    def _serve(self, request, sender):
        prompt = _text(pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0])
        kwargs = {}
        for name, (field, cast) in SAMPLING.items():
            value = _first(request, name, cast)
            if value is not None:
                kwargs[field] = value
        stop = pb_utils.get_input_tensor_by_name(request, "sampling_param_stop")
        if stop is not None:
            kwargs["stop"] = [_text(v) for v in stop.as_numpy().reshape(-1) if _text(v)]
        exclude = _first(request, "sampling_param_exclude_input_from_output", bool)
        params = self._sampling_params(**kwargs)
        streaming = bool(_first(request, "streaming", bool))
        if streaming and sender is None:
            raise ValueError("streaming needs the decoupled model: repackage with triton.decoupled true")
        if streaming:
            for output in self.llm.generate_async(prompt, params, streaming=True):
                completion = output.outputs[0]
                sender.send(self._response(completion.text_diff, completion.finish_reason))
            return None
        completion = self.llm.generate(prompt, params).outputs[0]
        text = completion.text if exclude is None or exclude else prompt + completion.text
        return self._response(text, completion.finish_reason)
