"""The embedded artifact restores the exact quantized model (logits max |Δ| = 0)."""

from __future__ import annotations

import copy

import pytest

from llm_quant.runtime.embedded import load_quantized, load_reference, save_embedded

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("cfg_name", ["INT8_SMOOTHQUANT_CFG", "FP8_DEFAULT_CFG"])
def test_embedded_restore_is_exact(tiny_llama, tmp_path, cfg_name):
    import modelopt.torch.quantization as mtq
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    ids = tokenizer("def f(x):\n    return x * 2  # double it\n" * 8, return_tensors="pt").input_ids[:, :96]
    model = mtq.quantize(model, copy.deepcopy(getattr(mtq, cfg_name)), lambda m: m(ids))
    out = save_embedded(model, tokenizer, tiny_llama, tmp_path / "embedded", qformat="q", dtype="float32",
                        kv_cache_dtype=None, exclude_modules=[])
    # Every file loads without pickle.
    payload = torch.load(out / "modelopt_state.pth", weights_only=True)
    assert payload["quantizer_tensors"], "quantizer buffers must be saved"
    restored, restored_tok = load_quantized(out, kernels="fake")
    reference, _ = load_reference(out)
    with torch.no_grad():
        expected = model(ids).logits
        got = restored(ids).logits
        ref = reference(ids).logits
    assert torch.equal(expected, got)
    assert (expected - ref).abs().max() > 0, "the quantized model must differ from the reference"
    assert restored_tok("hello world").input_ids == tokenizer("hello world").input_ids
    # Small: base weights are not copied into the artifact.
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert (out / "modelopt_state.pth").stat().st_size < weights / 4
