"""The embedded runtime's decoding: TensorRT-LLM sampling semantics, batching equals one-by-one, word lists."""

from __future__ import annotations

import numpy as np
import pytest

from llm_quant.runtime import load_quantized
from triton_backend.generation import Sampling, batchable, generate_batch, generate_ids, words_from_tensor

PROMPTS = ["def f(x):", "The quick brown fox", "for i in range(10):", "a", "import os\nimport sys\n"]


@pytest.fixture(scope="module")
def quantized(tiny_build):
    return load_quantized(tiny_build / "embedded")


def _opts(tokenizer, max_new, **kw):
    return Sampling(max_new_tokens=max_new, end_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id, **kw)


def test_batched_greedy_equals_one_by_one_and_streams_every_token(quantized):
    model, tokenizer = quantized
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    options = [_opts(tokenizer, 6 + i) for i in range(len(prompts))]
    single = [generate_ids(model, p, o) for p, o in zip(prompts, options, strict=True)]
    streamed: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    batched = generate_batch(model, prompts, options, on_token=lambda row, token: streamed[row].append(token))
    assert batched == single
    assert all(streamed[i] == batched[i] for i in streamed)
    assert all(len(b) <= o.max_new_tokens for b, o in zip(batched, options, strict=True))


def test_sampling_semantics(quantized):
    model, tokenizer = quantized
    prompt = tokenizer.encode(PROMPTS[0])
    greedy = generate_ids(model, prompt, _opts(tokenizer, 8))
    assert generate_ids(model, prompt, _opts(tokenizer, 8, top_k=1, temperature=5.0)) == greedy  # top_k 1 = greedy
    hot = [generate_ids(model, prompt, _opts(tokenizer, 8, top_k=50, temperature=3.0, seed=s)) for s in (1, 1, 2)]
    assert hot[0] == hot[1] and hot[0] != hot[2]  # seeded sampling is reproducible and seed-dependent
    # A stop word ends generation right after it appears.
    stop = greedy[2:4]
    assert generate_ids(model, prompt, _opts(tokenizer, 8, stop_words=[stop]))[-2:] == stop
    assert not batchable([_opts(tokenizer, 4), _opts(tokenizer, 4, top_k=5)])
    assert batchable([_opts(tokenizer, 4), _opts(tokenizer, 9)])


def test_word_list_layout():
    # TensorRT-LLM's [2, n] layout: flat ids, then cumulative end offsets padded with -1.
    words = np.array([[5, 6, 7, 8, 0], [2, 3, 4, -1, -1]])
    assert words_from_tensor(words) == [[5, 6], [7], [8]]
    assert words_from_tensor(np.array([[0], [-1]])) == []
