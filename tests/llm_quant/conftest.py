"""A tiny random Llama (hidden 64, 2 layers) with a BPE tokenizer trained in code: offline, built in ~1 s."""

from __future__ import annotations

import pytest

TINY_ROPE_THETA = 12345.0
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus_lines(limit: int = 60) -> list[str]:
    import pydoc_data.topics as topics

    return [topics.topics[key] for key in sorted(topics.topics)[:limit]]


def build_tiny_llama(folder, *, vocab_size: int = 384, seed: int = 0, tokenizer: bool = True,
                     config: bool = True):
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                           "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus_lines(), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>",
                                                eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                                unk_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    cfg = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rope_theta=TINY_ROPE_THETA, tie_word_embeddings=False,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(folder))
    if tokenizer:
        fast.save_pretrained(str(folder))
    if not config:
        (folder / "config.json").unlink()
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
