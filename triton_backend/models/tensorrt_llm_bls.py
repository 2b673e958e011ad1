"""Triton python-backend model ``tensorrt_llm_bls``: the ensemble's request interface as business logic.

Calls ``preprocessing`` -> ``tensorrt_llm`` -> ``postprocessing`` itself (Business Logic Scripting), which lets a
streaming request detokenize each new token as it arrives and lets ``max_tokens`` default to a parameter.
Written by ``llm-quant package``; self-contained (numpy only).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


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
        config = json.loads(args["model_config"])
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        self.default_max_tokens = int(params.get("default_max_tokens", "64"))
        # request input -> [step model, step input] as upstream's ensemble routes it (per backend version), and our
        # preprocessing outputs -> core inputs; absent optional inputs are simply not forwarded.
        self.routes = json.loads(params["routes"])
        self.pre_to_core = json.loads(params["pre_to_core"])
        self.unsupported = json.loads(params.get("unsupported_inputs", "{}"))
        self.stream_input = next(name for name, (model, target) in self.routes.items() if target == "streaming")
        # core outputs upstream's BLS returns under the same name (log-probs, logits, ...): forwarded when present
        self.passed_through = json.loads(params.get("passed_through", "[]"))

    def execute(self, requests):
        responses = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else None
            try:
                result = self._run(request, sender)
                response = None if result is None else pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text_output", np.array(["".join(result[0]).encode("utf-8")], dtype=object)),
                    *result[1]])
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
    def _input(request, name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else tensor.as_numpy()

    def _run(self, request, sender):
        _refuse_unsupported(request, self.unsupported, "this repository's tensorrt_llm_bls")
        batch = self._input(request, "text_input").shape[0]
        step_inputs = {"preprocessing": [], "tensorrt_llm": []}
        for name, (model, target) in self.routes.items():
            value = self._input(request, name)
            if value is None and name == "max_tokens":
                value = np.full((batch, 1), self.default_max_tokens, dtype=np.int32)
            if value is not None:
                # Inputs upstream declares with reshape: [] arrive as [batch]; the step models take [batch, 1].
                step_inputs[model].append(pb_utils.Tensor(target, value.reshape(-1, 1) if value.ndim == 1 else value))
        pre = pb_utils.InferenceRequest(model_name="preprocessing", inputs=step_inputs["preprocessing"],
                                        requested_output_names=list(self.pre_to_core)).exec()
        if pre.has_error():
            raise ValueError(pre.error().message())
        core_inputs = [pb_utils.Tensor(target, pb_utils.get_output_tensor_by_name(pre, name).as_numpy())
                       for name, target in self.pre_to_core.items()] + step_inputs["tensorrt_llm"]
        stream = self._input(request, self.stream_input)
        streaming = bool(stream is not None and stream.reshape(-1)[0])
        if streaming and sender is None:
            raise ValueError("streaming needs the decoupled model: repackage with triton.decoupled true")
        core = pb_utils.InferenceRequest(model_name="tensorrt_llm", inputs=core_inputs,
                                         requested_output_names=["output_ids", "sequence_length",
                                                                 *self.passed_through])
        replies = core.exec(decoupled=True) if self.decoupled else [core.exec()]
        texts, extra = [], {}
        for reply in replies:
            if reply.has_error():
                raise ValueError(reply.error().message())
            ids = pb_utils.get_output_tensor_by_name(reply, "output_ids")
            if ids is None:  # an empty final response closes the stream
                continue
            lengths = pb_utils.get_output_tensor_by_name(reply, "sequence_length").as_numpy()
            text = self._detokenize(ids.as_numpy(), lengths)
            # what the core returned of upstream's other outputs (absent when their return_* flag is off)
            present = {name: pb_utils.get_output_tensor_by_name(reply, name) for name in self.passed_through}
            present = {name: pb_utils.Tensor(name, t.as_numpy()) for name, t in present.items() if t is not None}
            if streaming:
                sender.send(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=object)),
                    *present.values()]))
            else:
                texts.append(text)
                extra.update(present)
        return None if streaming else (texts, list(extra.values()))

    @staticmethod
    def _detokenize(ids, lengths):
        post = pb_utils.InferenceRequest(
            model_name="postprocessing", requested_output_names=["OUTPUT"],
            inputs=[pb_utils.Tensor("TOKENS_BATCH", ids), pb_utils.Tensor("SEQUENCE_LENGTH", lengths)]).exec()
        if post.has_error():
            raise ValueError(post.error().message())
        out = pb_utils.get_output_tensor_by_name(post, "OUTPUT").as_numpy().reshape(-1)  # flat, as upstream
        return out[0].decode("utf-8") if isinstance(out[0], bytes) else str(out[0])
