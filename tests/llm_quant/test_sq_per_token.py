"""Per-token SmoothQuant (``--sq-activations per_token``) and the per-layer alpha search, with real modelopt."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_quant import cli, pipeline
from llm_quant.calibration import calibrate, per_token, smoothing
from llm_quant.evaluation.sensitivity import SearchResult
from llm_quant.export import sq_checkpoint, verify
from llm_quant.pipeline import build, prepare, quantize_model
from llm_quant.runtime.embedded import load_quantized, save_embedded, sq_activations_of
from quant_common.errors import QuantError
from quant_common.manifest import Timings
from tests.llm_quant.helpers import rank_weights, tiny_config, trt_config

torch = pytest.importorskip("torch")


def reference_per_token(x: np.ndarray, pqs: np.ndarray) -> np.ndarray:
    """The per-token formula written independently, row by row in float64 numpy (np.rint: half to even)."""
    v = (x.astype(np.float32) * pqs.astype(np.float32)).astype(np.float64)
    out = np.zeros_like(v)
    for i, row in enumerate(v.reshape(-1, v.shape[-1])):
        amax = np.abs(row).max()
        if amax <= 2.0 ** -24:
            continue
        scale = np.float32(127.0) / np.float32(amax)
        out.reshape(-1, v.shape[-1])[i] = np.clip(np.rint(row * scale), -127, 127) / scale
    return out


def test_fake_per_token_matches_the_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, generator=gen) * torch.logspace(-2, 2, 16)
    x[1, 2] = 0.0  # an all-zero token row quantizes to 0, not NaN
    x[2, 0, 3] = 1e4  # one outlier row: only that row's scale changes
    pqs = torch.rand(16, generator=gen) + 0.5
    got = per_token.fake_quant_per_token(x, pqs)
    want = reference_per_token(x.numpy(), pqs.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    assert torch.all(got[1, 2] == 0)
    # each row keeps its own scale: the outlier row does not flatten the others (per-tensor would)
    per_tensor_step = float((x * pqs).abs().max()) / 127
    assert float((got[0] - x[0] * pqs).abs().max()) < per_tensor_step / 100
    # half-to-even: 2.5 and 3.5 steps round to 2 and 4
    row = torch.tensor([[127.0, 2.5, 3.5, -2.5]])
    assert per_token.fake_quant_per_token(row, None).tolist() == [[127.0, 2.0, 4.0, -2.0]]


@pytest.fixture(scope="module")
def tiny_calibrated(tiny_llama, tmp_path_factory):
    """(config, prepared data, per-token model with searched alphas) for the tiny Llama."""
    cfg, _ = tiny_config(tiny_llama, tmp_path_factory.mktemp("pt") / "out", qformat="int8_sq",
                         sq_activations="per_token", sq_alpha_search=True)
    prep = prepare(cfg)
    model, _ = quantize_model(cfg, prep, Timings())
    return cfg, prep, model


def test_model_linears_compute_per_token_math(tiny_calibrated):
    _, prep, model = tiny_calibrated
    switched = per_token.w8a8_input_quantizers(model)
    assert len(switched) == 14 and all(per_token.is_per_token(q) for _, q in switched)
    linear = model.get_submodule("model.layers.1.mlp.down_proj")
    captured = {}
    handle = linear.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        model(prep.calib_batches[0][:1])
        handle.remove()
        x = captured["x"]
        got = linear(x)
        pqs = linear.input_quantizer.pre_quant_scale
        want = torch.nn.functional.linear(per_token.fake_quant_per_token(x, pqs),
                                          linear.weight_quantizer(linear.weight))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_input_groups_share_one_smoothing_scale(tiny_calibrated):
    _, _, model = tiny_calibrated
    report = model.smoothquant_report
    assert report.searched and report.activations == "per_token"
    assert len(report.alpha) == 8  # 2 layers x (qkv, o, gate+up, down)
    assert set(report.alpha.values()) <= set(smoothing.ALPHA_GRID)
    for group in report.alpha:
        names = group.split("+")
        scales = [model.get_submodule(n).input_quantizer.pre_quant_scale for n in names]
        assert all(torch.equal(scales[0], s) for s in scales[1:]), group
    assert any(len(g.split("+")) == 3 for g in report.alpha) and any(len(g.split("+")) == 2 for g in report.alpha)


def test_alpha_matters_on_outlier_channels():
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(64, 64, generator=gen) * torch.logspace(-1, 1.5, 64)  # outlier channels
    weights = [torch.randn(32, 64, generator=gen)]
    amax = rows.abs().amax(dim=0)
    errors = {a: smoothing.group_error(rows, weights, amax, a, "per_tensor")[0] for a in smoothing.ALPHA_GRID}
    assert max(errors.values()) > 1.5 * min(errors.values()), "alpha must matter on outlier channels"


def test_restored_per_token_model_reproduces_the_in_memory_one(tiny_calibrated, tmp_path):
    cfg, prep, model = tiny_calibrated
    out = save_embedded(model, prep.tokenizer, prep.model_dir, tmp_path / "embedded", qformat="int8_sq",
                        dtype="float32", kv_cache_dtype=None, exclude_modules=[], sq_activations="per_token")
    meta = json.loads((out / "runtime.json").read_text())
    assert meta["sq_activations"] == "per_token" and meta["weight_overrides"] == 0
    restored, _ = load_quantized(out, kernels="fake")
    ids = prep.calib_batches[0][:1]
    with torch.no_grad():
        expected, got = model(ids).logits, restored(ids).logits
    assert torch.equal(expected, got)
    # the same state read as per-tensor (an old runtime.json) is a different model
    meta["sq_activations"] = "per_tensor"
    (out / "runtime.json").write_text(json.dumps(meta))
    per_tensor_model, _ = load_quantized(out, kernels="fake")
    with torch.no_grad():
        assert (per_tensor_model(ids).logits - expected).abs().max() > 0
    assert sq_activations_of({}) == "per_tensor"


@pytest.fixture(scope="module")
def per_token_build(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptb") / "out"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", sq_activations="per_token", sq_alpha_search=True,
                              build_engine=False)
    return build(cfg, model_source=source), out


def test_per_token_checkpoint_has_exactly_the_table_tensors(per_token_build):
    result, out = per_token_build
    config = trt_config(out)
    assert config["quantization"]["quant_algo"] == result.quant_algo == sq_checkpoint.quant_algo()
    summary = verify.verify_trtllm_checkpoint(out / "trtllm_checkpoint")
    assert summary["quantized_linears_rank0"] == 2 * 5
    weights = rank_weights(out)
    table = {f"{t.module}.{t.name}" for t in sq_checkpoint.facts().tensors}
    for layer in (0, 1):
        prefix = f"transformer.layers.{layer}."
        assert {k.removeprefix(prefix) for k in weights if k.startswith(prefix)} == table
    assert float(weights["transformer.layers.0.input_layernorm.scale_to_int"]) == 1.0


def test_per_token_checkpoint_computes_the_runtime_math(per_token_build, tiny_llama):
    """TensorRT-LLM's per-token GEMM on the checkpoint tensors == the embedded fake-quant linear."""
    _, out = per_token_build
    weights = rank_weights(out)
    model, _ = load_quantized(out / "embedded", kernels="fake")
    gen = torch.Generator().manual_seed(2)
    for trt, hf in (("attention.dense", "self_attn.o_proj"), ("mlp.proj", "mlp.down_proj")):
        prefix = f"transformer.layers.1.{trt}."
        linear = model.get_submodule(f"model.layers.1.{hf}")
        x = torch.randn(4, linear.in_features, generator=gen)
        smoothed = x / weights[prefix + "smoother"]  # TensorRT-LLM divides by the smoother
        q = per_token.fake_quant_per_token(smoothed, None)
        trt_out = q @ (weights[prefix + "weight"].float() * weights[prefix + "per_channel_scale"].reshape(-1, 1)).t()
        with torch.no_grad():
            ours = linear(x)
        rel = float((trt_out - ours).norm() / ours.norm())
        assert rel < 1e-5, (trt, rel)  # the scales are fp16-exact, so only float rounding differs
    # q/k/v: the smoothing scale lives in the RMSNorm weight
    from safetensors.torch import load_file

    base = load_file(str(tiny_llama / "model.safetensors"))
    norm_w = base["model.layers.0.input_layernorm.weight"].float()
    pqs = model.get_submodule("model.layers.0.self_attn.q_proj").input_quantizer.pre_quant_scale.float()
    folded = weights["transformer.layers.0.input_layernorm.weight"].float()
    torch.testing.assert_close(folded, norm_w * pqs, rtol=2e-3, atol=1e-4)
    assert float((pqs - 1).abs().max()) > 0.05, "the fold must be visible: scales far from 1"


def test_per_token_build_records_mode_alphas_and_skips_hf(per_token_build):
    result, out = per_token_build
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["result"]["sq_activations"] == "per_token" and manifest["config"]["sq_alpha_search"]
    assert manifest["result"]["smoothquant"]["searched"]
    alphas = manifest["result"]["smoothquant"]["alpha"]
    assert len(alphas) == 8 and set(alphas.values()) <= set(smoothing.ALPHA_GRID)
    assert manifest["expected_quant_algo"] == sq_checkpoint.quant_algo()
    assert result.hf_checkpoint is None and "per-token" in result.hf_checkpoint_skipped
    assert not (out / "hf_checkpoint").exists()
    assert json.loads((out / "embedded" / "runtime.json").read_text())["sq_activations"] == "per_token"


def test_verifier_rejects_a_per_token_checkpoint_missing_a_table_tensor(per_token_build, tmp_path):
    import shutil

    from safetensors.torch import save_file

    _, out = per_token_build
    broken = tmp_path / "ckpt"
    shutil.copytree(out / "trtllm_checkpoint", broken)
    weights = rank_weights(out)
    weights.pop("transformer.layers.1.mlp.proj.smoother")
    save_file(weights, str(broken / "rank0.safetensors"))
    with pytest.raises(QuantError, match="mlp.proj.smoother is missing"):
        verify.verify_trtllm_checkpoint(broken)
    weights = rank_weights(out)
    weights["transformer.layers.0.attention.qkv.act_scale"] = torch.ones(1, 1)
    save_file(weights, str(broken / "rank0.safetensors"))
    with pytest.raises(QuantError, match="static-scale"):
        verify.verify_trtllm_checkpoint(broken)


def _cli(args):
    result = CliRunner().invoke(cli.app, args)
    return result.exit_code, (getattr(result, "stderr", None) or result.output)


def _one_error_line(text):
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_bad_sq_activations_is_one_line(tiny_llama, tmp_path):
    code, text = _cli(["build", "--model", str(tiny_llama), "--sq-activations", "per_row", "--device", "cpu",
                       "--out", str(tmp_path / "o")])
    assert code != 0
    line = _one_error_line(text)
    assert "sq_activations" in line and "per_token" in line and "per_tensor" in line
    code, text = _cli(["build", "--model", str(tiny_llama), "--qformat", "fp8", "--sq-activations", "per_token",
                       "--device", "cpu", "--out", str(tmp_path / "o")])
    assert code != 0 and "int8_sq only" in _one_error_line(text)
    assert not (tmp_path / "o").exists()


def _uniform_search(met: bool, calls: list[dict]):
    def search(model, windows, ref, budget, **kw):
        calls.append(kw)
        uniform = ref.ppl * (1.001 if met else 1.5)  # ref: the reference's Perplexity
        return SearchResult(budget, budget * 0.7, ref.ppl, uniform, uniform, met=met, quantized_weight_share=1.0)
    return search


def test_per_token_budget_unmet_uniformly_is_one_line_and_writes_nothing(tiny_llama, tmp_path, monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(pipeline, "search_exclusions", _uniform_search(False, calls))
    cfg, source = tiny_config(tiny_llama, tmp_path / "o", qformat="int8_sq", sq_activations="per_token",
                              accuracy_budget=3.0, build_engine=False)
    with pytest.raises(QuantError, match="exclude_modules") as err:
        build(cfg, model_source=source)
    assert "+50.00 %" in str(err.value) and "per_tensor" in err.value.fix
    # one search, which may not pick linears the checkpoint cannot keep (under the default budget rule)
    assert [c["may_exclude"] for c in calls] == [False]
    assert not (tmp_path / "o").exists()


def test_per_token_budget_met_uniformly_builds_fully_quantized(tiny_llama, tmp_path, monkeypatch):
    calls: list[dict] = []
    monkeypatch.setattr(pipeline, "search_exclusions", _uniform_search(True, calls))
    cfg, source = tiny_config(tiny_llama, tmp_path / "o", qformat="int8_sq", sq_activations="per_token",
                              accuracy_budget=3.0, build_engine=False)
    result = build(cfg, model_source=source)
    assert [c["may_exclude"] for c in calls] == [False]
    assert result.quantized_weight_share == 1.0 and result.exclude_modules == []
    assert result.quant_algo == sq_checkpoint.quant_algo()


def test_alpha_choice_rules():
    assert calibrate.smoothquant_alphas("int8_sq", "per_tensor", None, False) is None  # modelopt as before
    assert calibrate.smoothquant_alphas("int8_sq", "per_token", None, False) == (smoothing.DEFAULT_ALPHA,)
    assert calibrate.smoothquant_alphas("int8_sq", "per_token", 0.7, True) == (0.7,)  # a given alpha wins
    assert calibrate.smoothquant_alphas("int8_sq", "per_tensor", None, True) == smoothing.ALPHA_GRID
    assert calibrate.smoothquant_alphas("fp8", "per_tensor", None, True) is None


def test_preset_key_is_typed(tmp_path):
    import yaml

    from llm_quant.model import presets


    data = yaml.safe_load((presets.PRESET_DIR / "llama.yaml").read_text())
    assert presets.load_preset("llama").sq_activations == data["sq_activations"] == "per_token"
    data["sq_activations"] = "per_row"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(QuantError, match="sq_activations") as err:
        presets.read_preset(bad)
    assert "\n" not in str(err.value)


def test_per_tensor_alpha_search_build(tiny_llama, tmp_path):
    """per_tensor + --sq-alpha-search: static scales, searched alphas in build.json, one scale per fused input,
    and the exported prequant_scaling_factor is the scale the embedded runtime applies."""
    out = tmp_path / "out"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", sq_activations="per_tensor", sq_alpha_search=True,
                              build_engine=False)
    result = build(cfg, model_source=source)
    assert result.quant_algo == "W8A8_SQ_PER_CHANNEL" and result.hf_checkpoint is not None
    report = json.loads((out / "build.json").read_text())["result"]["smoothquant"]
    assert report["searched"] and report["activations"] == "per_tensor" and len(report["alpha"]) == 8
    runtime = json.loads((out / "embedded" / "runtime.json").read_text())
    assert runtime["sq_activations"] == "per_tensor" and runtime["weight_overrides"] == 0
    model, _ = load_quantized(out / "embedded", kernels="fake")
    assert not any(per_token.is_per_token(q) for _, q in per_token.w8a8_input_quantizers(model))
    weights = rank_weights(out)
    pqs = model.get_submodule("model.layers.1.mlp.up_proj").input_quantizer.pre_quant_scale
    exported = weights["transformer.layers.1.mlp.gate.prequant_scaling_factor"].float()
    torch.testing.assert_close(exported, pqs.float(), rtol=0, atol=0)  # fp16-exact: nothing re-smoothed


def test_eval_json_reports_mode_and_alphas(tiny_llama):
    result = CliRunner().invoke(cli.app, [
        "eval", "--model", str(tiny_llama), "--qformat", "int8_sq", "--sq-activations", "per_token",
        "--sq-alpha-search", "--device", "cpu", "--calib-size", "4", "--calib-seq-len", "64", "--eval-seq-len", "64",
        "--eval-tokens", "512", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["sq_activations"] == "per_token" and report["smoothquant"]["searched"]
    assert len(report["smoothquant"]["alpha"]) == 8 and report["delta_pct"] is not None


def test_per_token_build_runs_on_int8_kernels_like_its_fake_reference(per_token_build):
    """runtime.json's per_token reaches int8_linear: every W8A8 linear gets the per-token int8 kernel, and its
    logits follow the per-token fake-quant model (same integers; only float summation order differs)."""
    _, out = per_token_build
    int8_model, tokenizer = load_quantized(out / "embedded", kernels="int8")
    kinds = {name: kind for name, kind in int8_model.kernel_report.kernels.items() if ".layers." in name}
    assert len(kinds) == 14 and all(kind == "int8 W8A8 _int_mm per-token" for kind in kinds.values())
    fake_model, _ = load_quantized(out / "embedded", kernels="fake")
    assert all(per_token.is_per_token(q) for _, q in per_token.w8a8_input_quantizers(fake_model))
    ids = torch.tensor([tokenizer("The capital of France is a city with many bridges.")["input_ids"]])
    with torch.no_grad():
        got, expected = int8_model(ids).logits, fake_model(ids).logits
    assert (got - expected).abs().max() <= 1e-3 * expected.abs().max()
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
