"""Per-linear precision choices: names for every consumer, the quantized weight share, and the verifier."""

from __future__ import annotations

import json

import pytest

from llm_quant import pipeline
from llm_quant.calibration import calibrate, exclusions
from llm_quant.evaluation.sensitivity import InFullPrecision, SearchResult
from llm_quant.export import verify
from llm_quant.runtime import embedded
from llm_quant.upstream import modelopt_export_facts
from quant_common.errors import QuantError
from tests.llm_quant.helpers import rank_weights, tiny_config, trt_config

torch = pytest.importorskip("torch")
pytest.importorskip("modelopt.torch.quantization")

KEPT = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.mlp.down_proj"]


def _batches(model_dir):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok("\n".join(["The quick brown fox jumps over the lazy dog."] * 40), return_tensors="pt").input_ids
    return [ids[:, :64]]


def test_units_follow_the_fused_gemms(tiny_llama):
    model = calibrate.load_model(tiny_llama, dtype="float32", device="cpu")
    units = exclusions.precision_units(model)
    assert list(units)[:4] == ["model.layers.0.qkv", "model.layers.0.dense", "model.layers.0.gate_up",
                               "model.layers.0.down"]
    assert len(units) == 8  # 4 per layer, 2 layers
    assert units["model.layers.1.qkv"] == [f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]
    assert units["model.layers.1.gate_up"] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    assert sum(len(v) for v in units.values()) == len(exclusions.decoder_linears(model)) == 14


def test_trtllm_names_come_from_the_fact_table():
    rows = modelopt_export_facts().trtllm_linear_names
    assert {r.hf: r.trtllm for r in rows}["mlp.gate_proj"] == "mlp.fc"  # the crossed-over names
    assert {r.hf: r.trtllm for r in rows}["mlp.up_proj"] == "mlp.gate"
    for row in rows:
        assert row.source.repo == "NVIDIA/TensorRT-LLM" and row.source.commit
        assert exclusions.trtllm_pattern(f"model.layers.12.{row.hf}") == f"transformer.layers.12.{row.trtllm}"
    assert exclusions.trtllm_pattern("model.layers.3") == "transformer.layers.3.*"
    assert exclusions.trtllm_pattern("model.layers.3.mlp.router") is None
    assert exclusions.trtllm_patterns(KEPT) == ["transformer.layers.0.attention.qkv", "transformer.layers.1.mlp.proj"]
    assert exclusions.hf_pattern("model.layers.3") == "model.layers.3.*"
    assert exclusions.hf_pattern(KEPT[-1]) == KEPT[-1]
    assert exclusions.exclusions_ignored_by("W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN")
    assert not exclusions.exclusions_ignored_by("W8A8_SQ_PER_CHANNEL")


def test_quantized_weight_share_counts_parameters(tiny_llama):
    if not hasattr(pytest.importorskip("modelopt.torch.quantization"), "INT8_WEIGHT_ONLY_CFG"):
        pytest.skip("this nvidia-modelopt has no INT8_WEIGHT_ONLY_CFG (0.37: int8_wo is refused in one line)")
    model = calibrate.quantize(calibrate.load_model(tiny_llama, dtype="float32", device="cpu"), "int8_wo",
                               _batches(tiny_llama))
    linears = exclusions.decoder_linears(model)
    total = sum(m.weight.numel() for m in linears.values())
    assert exclusions.quantized_weight_share(model) == 1.0
    down = linears["model.layers.1.mlp.down_proj"].weight.numel()
    with InFullPrecision(model, ["model.layers.1.mlp.down_proj"]):
        assert exclusions.quantized_weight_share(model) == pytest.approx(1 - down / total)
    assert exclusions.quantized_weight_share(model) == 1.0  # restored
    with InFullPrecision(model, ["model.layers.0"]):
        assert exclusions.quantized_weight_share(model) == pytest.approx(0.5)  # two identical layers
    # calibrated with linears excluded from the start: exactly those quantizers are off
    mixed = calibrate.quantize(calibrate.load_model(tiny_llama, dtype="float32", device="cpu"), "int8_wo",
                               _batches(tiny_llama), exclude_modules=KEPT)
    kept = sum(linears[n].weight.numel() for n in KEPT)
    assert exclusions.quantized_weight_share(mixed) == pytest.approx(1 - kept / total)
    off = {n for n, m in exclusions.decoder_linears(mixed).items() if not m.weight_quantizer.is_enabled}
    assert off == set(KEPT)


def test_modelopt_config_takes_linear_names():
    cfg = calibrate.modelopt_config("int8_sq", exclude_modules=[KEPT[-1]], exclude_layers=["model.layers.3"])
    assert calibrate.quant_cfg_entries(cfg)[-2:] == [("*model.layers.3.*", {"enable": False}),
                                                     ("*model.layers.1.mlp.down_proj.*", {"enable": False})]


def test_linear_exclusions_reach_every_artifact(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "search_exclusions", lambda model, windows, ref, budget, **kw: SearchResult(
        budget, budget * 0.7, ref.ppl, ref.ppl * 2, ref.ppl, excluded=list(KEPT)))  # ref: the reference's Perplexity
    out = tmp_path / "budget"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", accuracy_budget=1.0, sq_activations="per_tensor")
    result = pipeline.build(cfg, model_source=source)
    assert result.exclude_modules == KEPT and result.linears_kept_high_precision == 4
    # TensorRT-LLM: the fused module names of the fact table, stored unquantized; the rest stays INT8
    excluded = trt_config(out)["quantization"]["exclude_modules"]
    assert {"transformer.layers.0.attention.qkv", "transformer.layers.1.mlp.proj"} <= set(excluded)
    assert not any(p.startswith("transformer.layers.") and p.endswith("*") for p in excluded)
    weights = rank_weights(out)
    assert weights["transformer.layers.0.attention.qkv.weight"].dtype == torch.float16
    assert weights["transformer.layers.1.mlp.proj.weight"].dtype == torch.float16
    assert "transformer.layers.1.mlp.proj.weights_scaling_factor" not in weights
    for name in ("layers.0.attention.dense", "layers.0.mlp.proj", "layers.1.attention.qkv", "layers.1.mlp.fc"):
        assert weights[f"transformer.{name}.weight"].dtype == torch.int8, name
    # HF checkpoint: the HF linear names
    hf = json.loads((out / "hf_checkpoint" / "config.json").read_text())
    assert set(KEPT) <= set(hf["quantization_config"]["ignore"])
    assert "model.layers.1.mlp.up_proj" not in hf["quantization_config"]["ignore"]
    # embedded runtime: recorded, and those quantizers are off when it is loaded
    assert json.loads((out / "embedded" / "runtime.json").read_text())["exclude_modules"] == KEPT
    model, _ = embedded.load_quantized(out / "embedded", kernels="fake")
    linears = exclusions.decoder_linears(model)
    assert {n for n, m in linears.items() if not m.weight_quantizer.is_enabled} == set(KEPT)
    total = sum(m.weight.numel() for m in linears.values())
    expected = 1 - sum(linears[n].weight.numel() for n in KEPT) / total
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["result"]["quantized_weight_share"] == pytest.approx(expected, abs=1e-6)
    assert set(manifest["result"]["held_out"]) == {"eval", "heldout"}
    assert "dialogue" in manifest["result"]["held_out"]["heldout"]["text"]
    assert manifest["texts"]["search"].endswith("search split")


def test_verifier_rejects_a_quantized_excluded_linear(tiny_llama, tmp_path):
    out = tmp_path / "uniform"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq")
    pipeline.build(cfg, model_source=source)
    folder = out / "trtllm_checkpoint"
    config = json.loads((folder / "config.json").read_text())
    verify.verify_trtllm_checkpoint(folder)
    with pytest.raises(QuantError, match="lacks transformer.layers.1.mlp.proj"):
        verify.verify_trtllm_checkpoint(folder, expect_excluded=["model.layers.1.mlp.down_proj"])
    config["quantization"]["exclude_modules"] = [*config["quantization"]["exclude_modules"],
                                                 "transformer.layers.1.mlp.proj"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantError, match=r"transformer.layers.1.mlp.proj is excluded .* stored as int8"):
        verify.verify_trtllm_checkpoint(folder)
