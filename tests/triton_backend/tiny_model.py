"""A tiny random Llama, quantized with modelopt INT8 SmoothQuant and saved as a ``tq-embedded-v1`` build folder.

Offline and quick (~5 s on 2 cores): a byte-level BPE tokenizer trained in code on Python's own docs, a
LlamaForCausalLM from a config (hidden 64, 2 layers), ``mtq.quantize`` on CPU, ``llm_quant.runtime.save_embedded``.
Run as ``python -m tests.triton_backend.tiny_model OUT`` to make one by hand (benchmarks use it too).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

MAX_POSITIONS = 256


def _corpus(limit: int = 80) -> list[str]:
    import pydoc_data.topics as topics

    return [topics.topics[key] for key in sorted(topics.topics)[:limit]]


def build_tiny_build(out: Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write ``out/base`` (full-precision HF folder) and ``out/embedded`` (quantized); return ``out``."""
    import modelopt.torch.quantization as mtq
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from llm_quant.runtime import save_embedded

    out = Path(out)
    base = out / "base"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                                     pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    # Random weights at init scale give near-uniform logits; sharpen them so greedy decoding is well separated.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    calib = tokenizer("\n".join(_corpus(8)), return_tensors="pt").input_ids[:, :128]
    quantized = mtq.quantize(reloaded, copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG), lambda m: m(calib))
    save_embedded(quantized, tokenizer, base, out / "embedded", qformat="int8_sq", dtype="float32",
                  kv_cache_dtype=None, exclude_modules=[])
    return out


if __name__ == "__main__":
    print(build_tiny_build(Path(sys.argv[1])))
