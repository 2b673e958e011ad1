"""Triton python-backend model ``preprocessing``: prompt text -> token ids (TensorRT-LLM backend interface).

Written by ``llm-quant package``; self-contained (numpy + transformers) so the repository also runs in NVIDIA's
tritonserver TensorRT-LLM containers.
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
    """Relative paths in the config are relative to the repository root (the model folder's parent)."""
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.dirname(args["model_repository"]), path))


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


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


def _text(value):
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


class TritonPythonModel:
    def initialize(self, args):
        params = _parameters(args)
        self.tokenizer = AutoTokenizer.from_pretrained(_resolve(params["tokenizer_dir"], args))
        self.add_special_tokens = params.get("add_special_tokens", "true").lower() == "true"
        self.max_input_len = int(params.get("max_input_len", "0")) or None
        # an embedding_bias row must be as long as the model's vocabulary (the engine checks it)
        self.vocab_size = int(params.get("vocab_size", "0")) or len(self.tokenizer)
        self.unsupported = json.loads(params.get("unsupported_inputs", "{}"))
        self.end_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.end_id

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses

    def _words(self, rows, batch):
        """Phrases -> the [batch, 2, n] layout of TensorRT-LLM: token ids, then cumulative end offsets (-1 pad)."""
        encoded = []
        for index in range(batch):
            phrases = [] if rows is None else [_text(v) for v in np.asarray(rows[index]).reshape(-1)]
            ids, offsets = [], []
            for phrase in phrases:
                if not phrase:
                    continue
                tokens = self.tokenizer.encode(phrase, add_special_tokens=False)
                if tokens:
                    ids.extend(tokens)
                    offsets.append(len(ids))
            encoded.append((ids, offsets))
        width = max([1] + [max(len(ids), len(offsets)) for ids, offsets in encoded])
        out = np.zeros((batch, 2, width), dtype=np.int32)
        out[:, 1, :] = -1
        for index, (ids, offsets) in enumerate(encoded):
            out[index, 0, : len(ids)] = ids
            out[index, 1, : len(offsets)] = offsets
        return out

    def _embedding_bias(self, words, weights, batch):
        """EMBEDDING_BIAS_WORDS/WEIGHTS -> [batch, vocab] float32: every token of each word gets += its weight (as
        upstream's preprocessing; words are tokenized without special tokens). None of them: [batch, 0], which the
        backend reads as no bias."""
        if words is not None and weights is None and all(_text(v) == "" for v in np.asarray(words).reshape(-1)):
            words = None  # empty strings, as clients send for "no words"
        if words is None and weights is None:
            return np.zeros((batch, 0), dtype=np.float32)
        if words is None or weights is None:
            given, missing = ("embedding_bias_words", "embedding_bias_weights") if weights is None else (
                "embedding_bias_weights", "embedding_bias_words")
            raise ValueError(f"{given} needs {missing}: send one weight per word")
        bias = np.zeros((batch, self.vocab_size), dtype=np.float32)
        for row in range(batch):
            row_words = [_text(v) for v in np.asarray(words[row]).reshape(-1)]
            row_weights = [float(v) for v in np.asarray(weights[row]).reshape(-1)]
            if len(row_words) != len(row_weights):
                raise ValueError(f"embedding_bias_words has {len(row_words)} entries but embedding_bias_weights has "
                                 f"{len(row_weights)}: send one weight per word")
            for word, weight in zip(row_words, row_weights, strict=True):
                for token in self.tokenizer.encode(word, add_special_tokens=False) if word else []:
                    if token >= self.vocab_size:
                        raise ValueError(f"embedding bias word {word!r} has token {token}, outside the model's "
                                         f"vocabulary of {self.vocab_size}")
                    bias[row, token] += weight
        return bias

    def _one(self, request):
        _refuse_unsupported(request, self.unsupported, "this repository's preprocessing")
        query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
        batch = query.shape[0]
        prompts = [_text(v) for v in query.reshape(batch, -1)[:, 0]]
        output_len = pb_utils.get_input_tensor_by_name(request, "REQUEST_OUTPUT_LEN").as_numpy().reshape(batch, 1)
        if (output_len < 1).any():
            raise ValueError(f"max_tokens must be at least 1, got {int(output_len.min())}")
        encoded = [self.tokenizer.encode(p, add_special_tokens=self.add_special_tokens) for p in prompts]
        for ids in encoded:
            if not ids:
                raise ValueError("the prompt is empty: send a non-empty text_input")
            if self.max_input_len and len(ids) > self.max_input_len:
                raise ValueError(f"the prompt has {len(ids)} tokens but this model accepts at most "
                                 f"{self.max_input_len} input tokens: shorten the prompt")
        end_id = _optional(request, "END_ID")
        pad_id = _optional(request, "PAD_ID")
        end = end_id.reshape(batch, 1).astype(np.int32) if end_id is not None else np.full((batch, 1), self.end_id,
                                                                                            np.int32)
        pad = pad_id.reshape(batch, 1).astype(np.int32) if pad_id is not None else np.full((batch, 1), self.pad_id,
                                                                                            np.int32)
        width = max(len(ids) for ids in encoded)
        input_ids = np.empty((batch, width), dtype=np.int32)
        for index, ids in enumerate(encoded):
            input_ids[index, :] = pad[index, 0]
            input_ids[index, : len(ids)] = ids
        lengths = np.array([[len(ids)] for ids in encoded], dtype=np.int32)
        outputs = [
            pb_utils.Tensor("INPUT_ID", input_ids),
            pb_utils.Tensor("REQUEST_INPUT_LEN", lengths),
            pb_utils.Tensor("BAD_WORDS_IDS", self._words(_optional(request, "BAD_WORDS_DICT"), batch)),
            pb_utils.Tensor("STOP_WORDS_IDS", self._words(_optional(request, "STOP_WORDS_DICT"), batch)),
            pb_utils.Tensor("EMBEDDING_BIAS", self._embedding_bias(_optional(request, "EMBEDDING_BIAS_WORDS"),
                                                                   _optional(request, "EMBEDDING_BIAS_WEIGHTS"), batch)),
            pb_utils.Tensor("REQUEST_OUTPUT_LEN", output_len.astype(np.int32)),
            pb_utils.Tensor("OUT_END_ID", end),
            pb_utils.Tensor("OUT_PAD_ID", pad),
        ]
        return pb_utils.InferenceResponse(output_tensors=outputs)
