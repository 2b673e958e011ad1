"""Triton python-backend model ``postprocessing``: generated token ids -> text (TensorRT-LLM backend interface).

Written by ``llm-quant package``; self-contained (numpy + transformers).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from transformers import AutoTokenizer
except ImportError as exc:  # Triton logs only str(exc); transformers hides the real failure in __cause__
    raise ImportError(f"{exc} Cause: {exc.__cause__!r}" if exc.__cause__ else str(exc)) from exc


def _parameters(args):
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _resolve(path, args):
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(args["model_repository"]), path))


class TritonPythonModel:
    def initialize(self, args):
        params = _parameters(args)
        self.tokenizer = AutoTokenizer.from_pretrained(_resolve(params["tokenizer_dir"], args))
        self.skip_special_tokens = params.get("skip_special_tokens", "true").lower() == "true"

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            if tokens.ndim == 2:  # [batch, tokens]: a single beam
                tokens = tokens[:, None, :]
                lengths = lengths.reshape(-1, 1)
            batch, beams = tokens.shape[0], tokens.shape[1]
            texts = np.empty((batch, beams), dtype=object)
            for b in range(batch):
                for k in range(beams):
                    ids = tokens[b, k, : int(lengths[b, k])].tolist()
                    texts[b, k] = self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens).encode(
                        "utf-8")
            # One flat list of batch x beam texts, as upstream's postprocessing returns it: upstream's clients read
            # text_output[0] as bytes (end_to_end_grpc_client.py), which a [batch, beam] array would break.
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", texts.reshape(-1))]))
        return responses
