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


def test_fingerprints_see_any_one_element_change():
    from llm_quant.runtime.embedded import weight_fingerprints

    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 8)).to(torch.bfloat16)
    before = weight_fingerprints(model)
    assert set(before) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert weight_fingerprints(copy.deepcopy(model)) == before
    with torch.no_grad():
        model[0].weight.view(-1).view(torch.int16)[1234] += 1  # the next bfloat16 value, one element
        model[1].weight.copy_(model[1].weight.flip(1))  # a permutation keeps the plain and squared sums
    after = weight_fingerprints(model)
    assert after["0.weight"] != before["0.weight"] and after["1.weight"] != before["1.weight"]
    assert after["0.bias"] == before["0.bias"]


def test_export_with_load_fingerprints_reads_only_changed_tensors(tiny_llama, tmp_path, monkeypatch):
    """The export given the fingerprints taken at load writes the same folds and overrides as the one comparing every
    tensor with the base checkpoint, re-reading only the tensors calibration changed."""
    import modelopt.torch.quantization as mtq
    import transformers

    from llm_quant.runtime import embedded

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    loaded = embedded.weight_fingerprints(model)
    ids = tokenizer("def f(x):\n    return x * 2\n" * 8, return_tensors="pt").input_ids[:, :64]
    model = mtq.quantize(model, copy.deepcopy(mtq.INT8_SMOOTHQUANT_CFG), lambda m: m(ids))
    with torch.no_grad():
        model.model.norm.weight.add_(1e-3)  # a change no fold explains: stored as an override
    reads: list[str] = []
    original = embedded._BaseWeights.get
    monkeypatch.setattr(embedded._BaseWeights, "get", lambda self, key, device: reads.append(key) or
                        original(self, key, device))
    full = save_embedded(model, tokenizer, tiny_llama, tmp_path / "full", qformat="q", dtype="float32",
                         kv_cache_dtype=None, exclude_modules=[])
    all_reads, reads[:] = list(reads), []
    fast = save_embedded(model, tokenizer, tiny_llama, tmp_path / "fast", qformat="q", dtype="float32",
                         kv_cache_dtype=None, exclude_modules=[], loaded=loaded)
    a = torch.load(full / "modelopt_state.pth", weights_only=True)
    b = torch.load(fast / "modelopt_state.pth", weights_only=True)
    assert a["folded_weights"] == b["folded_weights"] and a["folded_weights"], "SmoothQuant folds some weights"
    assert sorted(a["weight_overrides"]) == sorted(b["weight_overrides"]) == ["model.norm.weight"]
    assert torch.equal(a["weight_overrides"]["model.norm.weight"], b["weight_overrides"]["model.norm.weight"])
    assert set(reads) == set(a["folded_weights"]) | {"model.norm.weight"}
    assert len(reads) < len(all_reads)
    restored, _ = load_quantized(fast, kernels="fake")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, restored(ids).logits)
