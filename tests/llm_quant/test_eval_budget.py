"""Perplexity evaluation and the accuracy budget (exclusions carried into both checkpoints)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from llm_quant import calibrate, cli, data, pipeline, sensitivity
from llm_quant.config import CalibConfig
from llm_quant.evaluate import perplexity
from llm_quant.sensitivity import SearchResult
from tests.llm_quant.helpers import rank_weights, tiny_config, trt_config

torch = pytest.importorskip("torch")


def test_eval_cli_json_reports_same_windows(tiny_llama, tmp_path):
    result = CliRunner().invoke(cli.app, [
        "eval", "--model", str(tiny_llama), "--qformat", "int8_wo", "--device", "cpu", "--calib-size", "4",
        "--calib-seq-len", "64", "--eval-seq-len", "64", "--eval-tokens", "1024", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["windows"] >= 4 and report["tokens"] == report["windows"] * (report["seq_len"] - 1)
    assert report["ppl_ref"] > 1 and report["ppl_quant"] > 1 and report["ppl_quant"] != report["ppl_ref"]
    expected = 100 * (report["ppl_quant"] - report["ppl_ref"]) / report["ppl_ref"]
    assert math.isclose(report["delta_pct"], expected, abs_tol=0.01)


def test_layer_search_finds_smallest_set(tiny_llama):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    docs = data.builtin_corpus()
    batches = data.calibration_batches(data.tokenize_split(docs, tok, "calib"), CalibConfig(size=4, seq_len=64))
    windows = data.tokenize_split(docs, tok, "search").windows(64, max_tokens=512)
    model = calibrate.load_model(tiny_llama, dtype="float32", device="cpu")
    model = calibrate.quantize(model, "int4_wo", batches)
    layers = sensitivity.decoder_layers(model)
    assert layers == ["model.layers.0", "model.layers.1"]
    uniform = perplexity(model, windows).ppl
    with sensitivity._LayersInFullPrecision(model, layers):
        full = perplexity(model, windows).ppl
    assert perplexity(model, windows).ppl == uniform, "quantizers must be restored after the probe"
    # A random model's ppl need not rise under quantization; pick a reference whose budget lies between.
    assert full != uniform
    low, high = sorted([full, uniform])
    target = (low + high) / 2
    budget = 1.0  # percent
    ref = target / (1 + budget * sensitivity.SEARCH_MARGIN / 100)
    result = sensitivity.search_exclusions(model, windows, ref, budget)
    assert result.probes == len(result.trials) and result.trials[0]["excluded"] == 0 and result.met
    if uniform <= target:
        assert result.excluded == [] and result.probes == 1
    else:
        assert 1 <= len(result.excluded) <= 2 and result.ppl_final <= target * (1 + 1e-9)
        assert set(result.layer_error) == set(layers) and all(v > 0 for v in result.layer_error.values())
        # the recorded trials are the search split's perplexity increase over the reference, in percent
        chosen = next(t for t in result.trials if t["excluded"] == len(result.excluded))
        assert math.isclose(chosen["loss"], 100 * (result.ppl_final - ref) / ref, rel_tol=1e-9)


def test_accuracy_budget_exclusions_reach_both_checkpoints(tiny_llama, tmp_path, monkeypatch):
    # The search itself is tested above; here its outcome must reach every artifact.
    monkeypatch.setattr(pipeline, "search_exclusions", lambda model, windows, ref, budget: SearchResult(
        budget, budget * 0.7, ref, ref * 2, ref, excluded=["model.layers.1"]))
    out = tmp_path / "budget"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", accuracy_budget=1.0, sq_activations="per_tensor")
    result = pipeline.build(cfg, model_source=source)
    assert result.exclude_layers == ["model.layers.1"]
    assert result.layers_kept_high_precision == len(result.exclude_layers)
    excluded = trt_config(out)["quantization"]["exclude_modules"]
    weights = rank_weights(out)
    for layer in result.exclude_layers:
        index = layer.rsplit(".", 1)[1]
        assert f"transformer.layers.{index}.*" in excluded
        assert weights[f"transformer.layers.{index}.mlp.fc.weight"].dtype == torch.float16
    hf = json.loads((out / "hf_checkpoint" / "config.json").read_text())
    for layer in result.exclude_layers:
        assert f"{layer}.*" in hf["quantization_config"]["ignore"]
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["search"]["excluded"] == result.exclude_layers
    runtime = json.loads((out / "embedded" / "runtime.json").read_text())
    assert runtime["exclude_modules"] == result.exclude_layers
