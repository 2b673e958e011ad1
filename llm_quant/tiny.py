"""A tiny quantized build: the tiny random Llama (``llm_quant.model.tiny``) calibrated with modelopt's INT8
SmoothQuant and saved as the embedded runtime. Offline, ~5 s: for tests, ``benchmarks/serving.py --tiny`` and
demos. It sits above the runtime stage (it writes an embedded artifact), hence outside ``model/``.

    python -m llm_quant.tiny OUT     # OUT/base (HF folder) + OUT/embedded (int8_sq, tq-embedded-v1)
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

from llm_quant.model.tiny import corpus, write_tiny_llama
from llm_quant.runtime.embedded import save_embedded
from quant_common.errors import require


def tiny_build(out: Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """``out/base`` (full-precision HF folder, 256 positions) and ``out/embedded`` (modelopt INT8 SmoothQuant,
    ``tq-embedded-v1``), as ``llm-quant package`` and the serving tests expect; returns ``out``."""
    torch = require("torch", purpose="the tiny model")
    transformers = require("transformers", purpose="the tiny model")
    mtq = require("modelopt.torch.quantization", purpose="quantizing the tiny model")
    out = Path(out)
    base, tokenizer = write_tiny_llama(out / "base", vocab_size=vocab_size, max_positions=256, rope_theta=None,
                                       chat=False, corpus_docs=80, logit_scale=8.0, seed=seed, save_tokenizer=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    calib = tokenizer("\n".join(corpus(8)), return_tensors="pt").input_ids[:, :128]
    quantized = mtq.quantize(model, copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG), lambda m: m(calib))
    save_embedded(quantized, tokenizer, base, out / "embedded", qformat="int8_sq", dtype="float32",
                  kv_cache_dtype=None, exclude_modules=[])
    return out


if __name__ == "__main__":
    print(tiny_build(Path(sys.argv[1])))

