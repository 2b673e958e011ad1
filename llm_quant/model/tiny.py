"""A tiny random Llama (hidden 64, 2 layers) with a byte-level BPE tokenizer trained in code on Python's own docs.

Offline and quick (~1 s): for tests, benchmarks and trying the pipeline without downloading a model. Never a
quality model: its weights are random. ``llm_quant.tiny`` quantizes it into an embedded build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quant_common.errors import require

# ChatML-style tokens, as SmolLM2 uses; ``chat=True`` adds <|im_start|> (the BOS) and a chat template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus(limit: int) -> list[str]:
    """The first ``limit`` topics of Python's bundled documentation (English prose and code)."""
    import pydoc_data.topics as topics

    return [topics.topics[key] for key in sorted(topics.topics)[:limit]]


def tiny_tokenizer(*, vocab_size: int, chat: bool, corpus_docs: int) -> Any:
    tokenizers = require("tokenizers", purpose="training the tiny tokenizer")
    transformers = require("transformers", purpose="the tiny model")
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if chat else ["<|endoftext|>", "<|im_end|>"]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
                                             show_progress=False)
    bpe.train_from_iterator(corpus(corpus_docs), trainer)
    extra = {"bos_token": "<|im_start|>"} if chat else {}
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", unk_token="<|endoftext|>", **extra)
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(folder: Path, *, vocab_size: int = 512, max_positions: int = 256, rope_theta: float | None = None,
               chat: bool = False, corpus_docs: int = 80, logit_scale: float = 1.0, seed: int = 0,
               save_tokenizer: bool = True) -> Path:
    """Write a random ``LlamaForCausalLM`` (and its tokenizer) as a HF folder; return ``folder``.

    ``logit_scale`` > 1 sharpens the head: random weights at init scale give near-uniform logits, and greedy
    decoding is then decided by noise.
    """
    return write_tiny_llama(folder, vocab_size=vocab_size, max_positions=max_positions, rope_theta=rope_theta,
                            chat=chat, corpus_docs=corpus_docs, logit_scale=logit_scale, seed=seed,
                            save_tokenizer=save_tokenizer)[0]


def write_tiny_llama(folder: Path, *, vocab_size: int, max_positions: int, rope_theta: float | None, chat: bool,
                     corpus_docs: int, logit_scale: float, seed: int, save_tokenizer: bool) -> tuple[Path, Any]:
    torch = require("torch", purpose="the tiny model")
    transformers = require("transformers", purpose="the tiny model")
    folder = Path(folder)
    tokenizer = tiny_tokenizer(vocab_size=vocab_size, chat=chat, corpus_docs=corpus_docs)
    extra: dict[str, Any] = {"bos_token_id": tokenizer.bos_token_id} if chat else {}
    if rope_theta is not None:
        extra["rope_theta"] = rope_theta
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    if logit_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(logit_scale)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(folder))
    if save_tokenizer:
        tokenizer.save_pretrained(str(folder))
    return folder, tokenizer


# Real dimensions for scale tests and benchmarks (random weights): HF config.json of each model.
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": False},
    "llama-3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                     "tie_word_embeddings": True},
}


def random_llama(folder: Path, *, shape: dict[str, Any], device: str = "cuda", dtype: str = "bfloat16",
                 seed: int = 0, max_positions: int = 8192, logit_scale: float = 1.0) -> Path:
    """A random ``LlamaForCausalLM`` of ``shape`` (``SHAPES`` or any config fields), made on ``device`` in ``dtype``
    (no download; an 8B model takes seconds on a GPU), saved as a HF folder with the tiny tokenizer, whose ids all
    fall inside any real vocabulary."""
    torch = require("torch", purpose="the random model")
    transformers = require("transformers", purpose="the random model")
    tokenizer = tiny_tokenizer(vocab_size=512, chat=True, corpus_docs=60)
    fields = {"vocab_size": len(tokenizer), "max_position_embeddings": max_positions, "rope_theta": 500000.0,
              **shape}
    config = transformers.LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id, **fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(config).to(getattr(torch, dtype))
    if logit_scale != 1.0:  # near-uniform random logits make greedy decoding a coin toss
        with torch.no_grad():
            model.lm_head.weight.mul_(logit_scale)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return Path(folder)
