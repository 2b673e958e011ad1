"""Real int8 kernels (llm_quant.int8_linear) against modelopt's fake-quant reference on a tiny Llama."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization")


@pytest.fixture(scope="module")
def tiny_parts(tiny_llama):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    text = "def f(x):\n    return x * 2  # double it\n" * 8
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :96]
    return tiny_llama, tokenizer, ids


def _embedded(tiny_parts, tmp_path, cfg_name):
    import modelopt.torch.quantization as mtq
    import transformers

    from llm_quant.runtime import save_embedded

    folder, tokenizer, ids = tiny_parts
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model = mtq.quantize(model, copy.deepcopy(getattr(mtq, cfg_name)), lambda m: m(ids))
    return save_embedded(model, tokenizer, folder, tmp_path / cfg_name, qformat="q", dtype="float32",
                         kv_cache_dtype=None, exclude_modules=[])


@pytest.fixture(scope="module")
def sq_embedded(tiny_parts, tmp_path_factory):
    return _embedded(tiny_parts, tmp_path_factory.mktemp("sq"), "INT8_SMOOTHQUANT_CFG")


def test_w8a8_matches_fake_quant(tiny_parts, sq_embedded):
    from llm_quant.evaluate import perplexity
    from llm_quant.int8_linear import Int8Linear
    from llm_quant.runtime import load_quantized

    _, _, ids = tiny_parts
    fake, _ = load_quantized(sq_embedded, kernels="fake")
    real, _ = load_quantized(sq_embedded, kernels="int8")
    layers = [m for m in real.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 2 * 7, "every projection of both decoder layers runs the int8 kernel"
    assert all(m.weight_q.dtype == torch.int8 for m in layers)
    assert real.kernel_report.kernels["lm_head"].startswith("fake-quant"), "lm_head is not quantized by int8_sq"
    with torch.no_grad():
        a, b = fake(ids).logits, real(ids).logits
    assert (a - b).abs().max() < 1e-4 * a.abs().max()
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    windows = ids[:, :96].reshape(2, 48)
    ppl_fake, ppl_real = perplexity(fake, windows).ppl, perplexity(real, windows).ppl
    assert abs(ppl_real - ppl_fake) / ppl_fake < 0.002


def test_w8a8_layer_is_the_integer_gemm(sq_embedded):
    """Int8Linear == (fake-quantized x) @ (fake-quantized W).T computed in float64: same integers, exact sum."""
    from llm_quant.int8_linear import convert_linears
    from llm_quant.runtime import load_quantized

    fake, _ = load_quantized(sq_embedded, kernels="fake")
    module = copy.deepcopy(fake.model.layers[0].mlp.down_proj)
    x = torch.randn(5, module.in_features) * 3
    with torch.no_grad():
        xq = module.input_quantizer(x).double()
        wq = module.weight_quantizer(module.weight).double()
    expected = xq @ wq.T
    holder = torch.nn.Module()
    holder.proj = module
    convert_linears(holder)
    assert module.weight is None, "the replaced FP32 weight is released"
    with torch.no_grad():
        got = holder.proj(x).double()
    assert module.input_quantizer.pre_quant_scale is not None, "SmoothQuant pre-scale must be exercised"
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_fake_kernels_stay_bit_identical(tiny_parts, sq_embedded):
    import modelopt.torch.quantization as mtq  # noqa: F401 - restores the quantized modules

    from llm_quant.runtime import load_quantized

    _, _, ids = tiny_parts
    first, _ = load_quantized(sq_embedded, kernels="fake")
    second, _ = load_quantized(sq_embedded, kernels="fake")
    assert not hasattr(first, "kernel_report")
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_quantized_linears_take_a_quarter_of_fp32(sq_embedded):
    from llm_quant.int8_linear import linear_weight_bytes
    from llm_quant.runtime import load_quantized, load_reference

    real, _ = load_quantized(sq_embedded)
    ref, _ = load_reference(sq_embedded)
    head = ref.lm_head.weight.numel() * 4
    assert (linear_weight_bytes(real) - head) <= 0.30 * (linear_weight_bytes(ref) - head)


def test_weight_only_int8_packed_kernel(tiny_parts, tmp_path):
    from llm_quant.int8_linear import Int8WeightOnlyLinear, convert_linears
    from llm_quant.runtime import load_quantized

    _, _, ids = tiny_parts
    out = _embedded(tiny_parts, tmp_path, "INT8_WEIGHT_ONLY_CFG")
    fake, _ = load_quantized(out, kernels="fake")
    default, _ = load_quantized(out)
    assert all(kind.startswith("fake-quant") for kind in default.kernel_report.kernels.values()), \
        "the packed weight-only kernel is opt-in (slower than FP32 on CPU)"
    real, _ = load_quantized(out, kernels="fake")
    report = convert_linears(real, weight_only=True)
    assert "14 x int8 W8" in report.summary()
    assert sum(isinstance(m, Int8WeightOnlyLinear) for m in real.modules()) == 14
    with torch.no_grad():
        a, b = fake(ids).logits, real(ids).logits
    assert (a - b).abs().max() < 1e-4 * a.abs().max()


def test_fp8_stays_fake_quant(tiny_parts, tmp_path):
    from llm_quant.runtime import load_quantized

    out = _embedded(tiny_parts, tmp_path, "FP8_DEFAULT_CFG")
    real, _ = load_quantized(out)
    assert all(kind.startswith("fake-quant") for kind in real.kernel_report.kernels.values())


def _tamper(embedded, key_suffix, value_fn):
    state_path = embedded / "modelopt_state.pth"
    payload = torch.load(state_path, weights_only=True)
    key = next(k for k in payload["quantizer_tensors"] if k.endswith(key_suffix))
    payload["quantizer_tensors"][key] = value_fn(payload["quantizer_tensors"][key])
    torch.save(payload, state_path)


@pytest.mark.parametrize(("suffix", "value_fn", "words"), [
    ("mlp.down_proj.weight_quantizer._amax", lambda t: t[:3], "does not fit"),
    ("mlp.down_proj.input_quantizer._amax", lambda t: -t.abs() - 1, "activation amax"),
    ("mlp.down_proj.input_quantizer._pre_quant_scale", lambda t: t[:5], "does not fit"),
])
def test_refuses_state_that_does_not_fit(tiny_parts, tmp_path, suffix, value_fn, words):
    import shutil

    from llm_quant.runtime import load_quantized
    from quant_common.errors import QuantError

    out = _embedded(tiny_parts, tmp_path, "INT8_SMOOTHQUANT_CFG")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    _tamper(broken, suffix, value_fn)
    with pytest.raises(QuantError) as info:
        load_quantized(broken)
    message = str(info.value)
    assert words in message and "\n" not in message


def test_unknown_kernels_refused(sq_embedded):
    from llm_quant.runtime import load_quantized
    from quant_common.errors import QuantError

    with pytest.raises(QuantError, match="unknown kernels"):
        load_quantized(sq_embedded, kernels="int4")


def test_runtime_json_announces_kernels(tiny_parts, tmp_path):
    import transformers

    from llm_quant.runtime import read_runtime_json, save_embedded

    folder, tokenizer, _ = tiny_parts
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    for qformat, words in (("int8_sq", "W8A8 torch._int_mm"), ("fp8", "fake-quant")):
        out = save_embedded(model, tokenizer, folder, tmp_path / qformat, qformat=qformat, dtype="float32",
                            kv_cache_dtype=None, exclude_modules=[])
        assert words in read_runtime_json(out)["kernels"]
