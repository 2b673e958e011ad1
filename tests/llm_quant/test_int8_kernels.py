"""Real int8 kernels (llm_quant.runtime.cpu.int8_linear) against modelopt's fake-quant reference on a tiny Llama."""

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

    from llm_quant.runtime.embedded import save_embedded


    folder, tokenizer, ids = tiny_parts
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model = mtq.quantize(model, copy.deepcopy(getattr(mtq, cfg_name)), lambda m: m(ids))
    return save_embedded(model, tokenizer, folder, tmp_path / cfg_name, qformat="q", dtype="float32",
                         kv_cache_dtype=None, exclude_modules=[])


@pytest.fixture(scope="module")
def sq_embedded(tiny_parts, tmp_path_factory):
    return _embedded(tiny_parts, tmp_path_factory.mktemp("sq"), "INT8_SMOOTHQUANT_CFG")


def test_w8a8_matches_fake_quant(tiny_parts, sq_embedded):
    from llm_quant.evaluation.perplexity import perplexity
    from llm_quant.runtime import load_quantized
    from llm_quant.runtime.cpu.int8_linear import Int8Linear


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
    from llm_quant.runtime import load_quantized
    from llm_quant.runtime.cpu.int8_linear import convert_linears


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


def _per_token_reference(x, pre_quant_scale):
    """The per-token formula in plain torch float32: (integers, amax per row)."""
    v = x.float() * pre_quant_scale.float() if pre_quant_scale is not None else x.float()
    amax = v.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax <= 2.0 ** -24, torch.zeros_like(amax), 127.0 / amax)
    return torch.round(v * scale).clamp(-127, 127), torch.where(amax <= 2.0 ** -24, torch.zeros_like(amax), amax)


def test_w8a8_per_token_is_the_row_wise_formula(sq_embedded):
    """activations="per_token": each row gets its own scale; the static amax is ignored; integers identical to the
    float formula, output = exact integer GEMM x row scale x channel scale; an all-zero row gives the bias."""
    from llm_quant.runtime import load_quantized
    from llm_quant.runtime.cpu.int8_linear import Int8Linear, _int8_scale, convert_linears


    fake, _ = load_quantized(sq_embedded, kernels="fake")
    module = copy.deepcopy(fake.model.layers[0].mlp.down_proj)
    module.bias = torch.nn.Parameter(torch.randn(module.out_features))
    pre = module.input_quantizer.pre_quant_scale
    assert pre is not None, "SmoothQuant pre-scale must be exercised"
    # rows 1000x apart: one static scale would flatten the small rows to zero, per-token keeps them
    x = torch.randn(6, module.in_features) * torch.tensor([1e-3, 1.0, 30.0, 1e3, 0.0, 5.0])[:, None]
    with torch.no_grad():
        w_ints = torch.round(module.weight.float() * _int8_scale(module.weight_quantizer.amax.float()).reshape(-1, 1))
        w_dequant = module.weight_quantizer.amax.float().reshape(-1) / 127.0
    q_ref, amax = _per_token_reference(x, pre)
    expected = (q_ref.double() @ w_ints.clamp(-127, 127).double().T) * (amax.double() / 127) * w_dequant.double()
    expected = expected + module.bias.detach().double()
    holder = torch.nn.Module()
    holder.proj = module
    report = convert_linears(holder, activations="per_token")
    assert report.kernels["proj"] == "int8 W8A8 _int_mm per-token"
    layer = holder.proj
    assert isinstance(layer, Int8Linear) and layer.per_token
    with torch.no_grad():
        got = layer(x).double()
    assert torch.equal(got[4], module.bias.detach().double().float().double()), "an all-zero row gives the bias"
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert (got[0] - module.bias.detach().double()).abs().max() > 0, "a tiny row is not flattened to zero"


def test_per_token_kernel_integers_match_torch():
    """The compiled per-token quantizer gives the float formula's integers exactly, ties included."""
    import numpy as np

    from llm_quant.runtime.cpu import int8_kernels


    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 300, generator=generator) * torch.logspace(-8, 4, 64)[:, None]
    x[5] = 0.0
    x[7, :4] = torch.tensor([2.5, -0.5, 1.5, 127.0])  # exact .5 ties after scaling (amax 127 -> scale 1)
    x[7, 4:] = 0.0
    pre = torch.rand(300, generator=generator) + 0.5
    pre[:4] = 1.0
    q = torch.empty(x.shape, dtype=torch.int8)
    row_amax = torch.empty(64, 1)
    int8_kernels.compiled().quantize_per_token(x.numpy(), pre.numpy(), q.numpy(), row_amax.numpy())
    q_ref, amax_ref = _per_token_reference(x, pre)
    assert torch.equal(q.float(), q_ref)
    assert torch.equal(row_amax, amax_ref)
    assert q[7, :4].tolist() == [2, 0, 2, 127]
    assert np.all(q[5].numpy() == 0)


def test_runtime_json_selects_per_token(sq_embedded, tmp_path):
    """runtime.json's sq_activations reaches convert_linears; an unknown value is refused in one line."""
    import json
    import shutil

    from llm_quant.runtime import load_quantized
    from llm_quant.runtime.cpu.int8_linear import Int8Linear
    from quant_common.errors import QuantError

    for value in ("per_token", "per_row"):
        folder = tmp_path / value
        shutil.copytree(sq_embedded, folder)
        meta = json.loads((folder / "runtime.json").read_text())
        (folder / "runtime.json").write_text(json.dumps({**meta, "sq_activations": value}))
        if value == "per_row":
            with pytest.raises(QuantError) as info:
                load_quantized(folder)
            assert "per_row" in str(info.value) and "\n" not in str(info.value)
            continue
        model, _ = load_quantized(folder)
        layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
        assert len(layers) == 14 and all(m.per_token for m in layers)
    default, _ = load_quantized(sq_embedded)
    assert not any(m.per_token for m in default.modules() if isinstance(m, Int8Linear))


def test_unknown_activation_mode_refused(sq_embedded):
    from llm_quant.runtime.cpu.int8_linear import convert_linears
    from quant_common.errors import QuantError

    with pytest.raises(QuantError, match="per_token"):
        convert_linears(torch.nn.Linear(2, 2), activations="dynamic")


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
    from llm_quant.runtime.cpu.int8_linear import linear_weight_bytes
    from llm_quant.runtime.embedded import load_quantized, load_reference


    real, _ = load_quantized(sq_embedded)
    ref, _ = load_reference(sq_embedded)
    head = ref.lm_head.weight.numel() * 4
    assert (linear_weight_bytes(real) - head) <= 0.30 * (linear_weight_bytes(ref) - head)


def test_weight_only_int8_packed_kernel(tiny_parts, tmp_path):
    from llm_quant.runtime import load_quantized
    from llm_quant.runtime.cpu.int8_linear import Int8WeightOnlyLinear, convert_linears


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

    from llm_quant.runtime.embedded import read_runtime_json, save_embedded


    folder, tokenizer, _ = tiny_parts
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    for qformat, words in (("int8_sq", "W8A8 torch._int_mm"), ("fp8", "fake-quant")):
        out = save_embedded(model, tokenizer, folder, tmp_path / qformat, qformat=qformat, dtype="float32",
                            kv_cache_dtype=None, exclude_modules=[])
        assert words in read_runtime_json(out)["kernels"]
    out = save_embedded(model, tokenizer, folder, tmp_path / "per_token", qformat="int8_sq", dtype="float32",
                        kv_cache_dtype=None, exclude_modules=[], sq_activations="per_token")
    assert "dynamic per-token" in read_runtime_json(out)["kernels"]


def test_cli_start_up_imports_neither_torch_nor_numba():
    """`llm-quant --help` stays fast: the int8 runtime imports torch and numba on first use, not at import."""
    import subprocess
    import sys

    code = "import sys, llm_quant.cli; print(sorted({'torch', 'numba'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _share_group_scales(model):
    """What llm_quant.calibration.smoothing does for a build: q/k/v (gate/up) share one pre-scale and one input amax."""
    with torch.no_grad():
        for layer in model.model.layers:
            for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")),
                                  (layer.mlp, ("gate_proj", "up_proj"))):
                first = getattr(parent, names[0]).input_quantizer
                for name in names[1:]:
                    quantizer = getattr(parent, name).input_quantizer
                    quantizer._pre_quant_scale.copy_(first._pre_quant_scale)
                    quantizer.amax = first.amax.clone()


@pytest.mark.parametrize("activations", ["per_token", "per_tensor"])
def test_fused_qkv_and_gate_up_are_bit_identical_to_unfused(tiny_parts, sq_embedded, activations):
    """Linears sharing their input and quantizer run as one GEMM (q/k/v, gate/up): the same logits bit for bit,
    prefill and decode, and the same bytes of quantized weights."""
    from llm_quant.runtime import load_quantized
    from llm_quant.runtime.cpu.int8_linear import Int8Linear, convert_linears, linear_weight_bytes


    _, _, ids = tiny_parts
    fake, _ = load_quantized(sq_embedded, kernels="fake")
    _share_group_scales(fake)
    unfused, fused = copy.deepcopy(fake), copy.deepcopy(fake)
    assert convert_linears(unfused, activations=activations, fuse=False).fused == []
    report = convert_linears(fused, activations=activations)
    assert len(report.fused) == 4 and report.fused[0] == [f"model.layers.0.self_attn.{n}_proj" for n in "qkv"]
    assert "fused GEMMs: 2 x gate_proj+up_proj, 2 x q_proj+k_proj+v_proj" in report.summary()
    q = fused.model.layers[0].self_attn.q_proj
    assert isinstance(q, Int8Linear) and q.weight_q.untyped_storage().data_ptr() == \
        fused.model.layers[0].self_attn.v_proj.weight_q.untyped_storage().data_ptr(), "members are views of one weight"
    assert linear_weight_bytes(fused) == linear_weight_bytes(unfused)
    with torch.no_grad():
        a, b = unfused(ids).logits, fused(ids).logits
        assert torch.equal(a, b)
        a_gen = unfused.generate(ids[:, :20], max_new_tokens=6, do_sample=False)
        b_gen = fused.generate(ids[:, :20], max_new_tokens=6, do_sample=False)
    assert torch.equal(a_gen, b_gen)
    x = torch.randn(3, 7, q.in_features)  # a member called on its own, twice: a fresh GEMM each time
    with torch.no_grad():
        for name in ("k_proj", "k_proj", "v_proj", "q_proj"):
            assert torch.equal(getattr(fused.model.layers[1].self_attn, name)(x),
                               getattr(unfused.model.layers[1].self_attn, name)(x))
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(fused)(ids).logits, b), "a copy keeps its groups"


def test_groups_with_different_scales_stay_unfused(sq_embedded):
    """Linears whose pre-scales differ (each with its own SmoothQuant scale) quantize their input differently:
    quantizing once would change integers, so they keep their own GEMMs."""
    from llm_quant.runtime import load_quantized
    from llm_quant.runtime.cpu.int8_linear import convert_linears


    fake, _ = load_quantized(sq_embedded, kernels="fake")
    with torch.no_grad():
        fake.model.layers[0].self_attn.k_proj.input_quantizer._pre_quant_scale.mul_(2.0)
    report = convert_linears(fake)
    attn = fake.model.layers[0].self_attn
    assert attn.q_proj.group is None and attn.k_proj.group is None and attn.v_proj.group is None
    assert len(report.fused) == 3 and ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj",
                                       "model.layers.1.self_attn.v_proj"] in report.fused


@pytest.mark.parametrize("per_row", [True, False])
def test_dequantize_epilogue_is_torchs_formula_bit_for_bit(per_row):
    """int32 x (row_amax / 127) x column scale + bias in one pass == torch's three ops, in fused blocks."""
    from llm_quant.runtime.cpu import int8_kernels


    generator = torch.Generator().manual_seed(1)
    acc = torch.randint(-2**22, 2**22, (37, 50), dtype=torch.int32, generator=generator)
    row_amax = torch.rand(37, 1, generator=generator) * 40
    row_amax[3] = 0.0
    cols = torch.rand(50, generator=generator) / 127
    bias = torch.randn(50, generator=generator)
    bounds = torch.tensor([0, 20, 30, 50])
    for with_bias in (True, False):
        expected = acc * (row_amax / 127.0) * cols if per_row else acc * cols
        if with_bias:
            expected = expected + bias
        out = torch.empty(37 * 50)
        int8_kernels.compiled().dequantize(acc.numpy(), row_amax.numpy()[:, 0], per_row, cols.numpy(),
                                           bias.numpy(), with_bias, bounds.numpy(), out.numpy())
        for lo, hi in ((0, 20), (20, 30), (30, 50)):
            assert torch.equal(out[37 * lo:37 * hi].view(37, hi - lo), expected[:, lo:hi])
