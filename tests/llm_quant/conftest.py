"""A tiny random Llama (hidden 64, 2 layers) with a BPE tokenizer trained in code: offline, built in ~1 s."""

from __future__ import annotations

import pytest

from llm_quant.model import tiny

TINY_ROPE_THETA = 12345.0


def build_tiny_llama(folder, *, vocab_size: int = 384, seed: int = 0, tokenizer: bool = True,
                     config: bool = True):
    """ChatML tokens, 512 positions and a rope_theta of its own (so a dropped rotary_base is noticed)."""
    tiny.tiny_llama(folder, vocab_size=vocab_size, max_positions=512, rope_theta=TINY_ROPE_THETA, chat=True,
               corpus_docs=60, seed=seed, save_tokenizer=tokenizer)
    if not config:
        (folder / "config.json").unlink()
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
