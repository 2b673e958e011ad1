"""Perplexity evaluation and the accuracy budget (exclusions carried into both checkpoints)."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from llm_quant import cli, pipeline
from llm_quant.calibration import calibrate, exclusions
from llm_quant.config import CalibConfig
from llm_quant.data import documents
from llm_quant.evaluation import sensitivity
from llm_quant.evaluation.perplexity import Perplexity, perplexity
from llm_quant.evaluation.sensitivity import SearchResult
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
    assert report["quantized_weight_share"] == 1.0 and report["exclude_modules"] == []  # uniform
    assert report["text"] == "mixed (prose/code/technical), eval split"
    held = report["heldout"]  # the bundled domain neither calibration nor a search sees
    assert "dialogue" in held["text"] and held["tokens"] > 0
    assert math.isclose(held["delta_pct"], 100 * (held["ppl_quant"] - held["ppl_ref"]) / held["ppl_ref"],
                        abs_tol=0.01)


def test_linear_search_finds_smallest_set(tiny_llama):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    docs = documents.mixed_corpus()
    batches = documents.calibration_batches(documents.tokenize_split(docs, tok, "calib", 3), CalibConfig(size=4, seq_len=64))
    windows = documents.tokenize_split(docs, tok, "search", 3).windows(64, max_tokens=512)
    model = calibrate.load_model(tiny_llama, dtype="float32", device="cpu")
    model = calibrate.quantize(model, "int4_wo", batches)
    layers = sensitivity.decoder_layers(model)
    assert layers == ["model.layers.0", "model.layers.1"]
    uniform = perplexity(model, windows).ppl
    with sensitivity.InFullPrecision(model, layers):
        full_probe = perplexity(model, windows)
    full = full_probe.ppl
    assert perplexity(model, windows).ppl == uniform, "quantizers must be restored after the probe"
    # A random model's ppl need not rise under quantization; pick a reference whose budget lies between.
    assert full != uniform
    low, high = sorted([full, uniform])
    target = (low + high) / 2
    budget = 1.0  # percent
    margin = sensitivity.SEARCH_MARGINS["point"]
    ref = target / (1 + budget * margin / 100)
    result = sensitivity.search_exclusions(model, windows, at_perplexity(full_probe, ref), budget, rule="point")
    assert result.rule == "point" and result.margin == margin
    assert result.probes == len(result.trials) and result.trials[0]["excluded"] == 0 and result.met
    if uniform <= target:
        assert result.excluded == [] and result.probes == 1 and result.quantized_weight_share == 1.0
    else:  # linear-level units were ranked and chosen, not layers
        units = exclusions.precision_units(model)
        assert 1 <= len(result.excluded_units) <= 8 and result.ppl_final <= target * (1 + 1e-9)
        assert set(result.unit_error) == set(units) and all(v > 0 for v in result.unit_error.values())
        assert result.excluded == [n for u in result.excluded_units for n in units[u]]
        assert all(n.endswith("_proj") for n in result.excluded)
        ranked = sensitivity.rank_units(model, units, result.unit_error)
        assert set(result.excluded_units) == set(ranked[:len(result.excluded_units)])  # a prefix of the ranking
        with sensitivity.InFullPrecision(model, result.excluded):
            assert result.quantized_weight_share == exclusions.quantized_weight_share(model) < 1.0
        # the recorded trials are the search split's perplexity increase over the reference, in percent
        chosen = next(t for t in result.trials if t["excluded"] == len(result.excluded_units))
        assert math.isclose(chosen["loss"], 100 * (result.ppl_final - ref) / ref, rel_tol=1e-9)
        assert chosen["loss_ci95"][0] <= chosen["loss"] <= chosen["loss_ci95"][1]
        # the CI rule asks the interval's upper end to meet the target: never fewer units kept
        strict_ci = sensitivity.search_exclusions(model, windows, at_perplexity(full_probe, ref), budget, rule="ci",
                                                  margin=margin)
        assert strict_ci.rule == "ci" and all("loss_ci95" in t for t in strict_ci.trials)
        if strict_ci.met:
            assert strict_ci.delta_pct_ci95[1] <= budget * margin
    # a format that cannot keep linears in higher precision: one uniform probe, unmet where uniform misses
    strict = sensitivity.search_exclusions(model, windows, at_perplexity(full_probe, uniform / 1.05), budget,
                                           may_exclude=False)
    assert strict.probes == 1 and strict.excluded == [] and not strict.met
    assert strict.quantized_weight_share == 1.0


def at_perplexity(probe: Perplexity, ppl: float) -> Perplexity:
    """``probe``'s token NLLs shifted so that their perplexity is ``ppl``: a reference scored on the same windows."""
    shift = math.log(ppl) - probe.nll
    return Perplexity(ppl, probe.nll + shift, probe.tokens, probe.token_nll + shift)


def test_whole_layer_exclusions_still_reach_both_checkpoints(tiny_llama, tmp_path, monkeypatch):
    # Layer names stay valid exclusions (library callers); linear names: test_exclusions.py.
    monkeypatch.setattr(pipeline, "search_exclusions", lambda model, windows, ref, budget, **kw: SearchResult(
        budget, budget * 0.7, ref.ppl, ref.ppl * 2, ref.ppl, excluded=["model.layers.1"]))
    out = tmp_path / "budget"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", accuracy_budget=1.0, sq_activations="per_tensor")
    result = pipeline.build(cfg, model_source=source)
    assert result.exclude_modules == ["model.layers.1"]
    assert result.quantized_weight_share == 0.5  # two identical layers
    excluded = trt_config(out)["quantization"]["exclude_modules"]
    weights = rank_weights(out)
    for layer in result.exclude_modules:
        index = layer.rsplit(".", 1)[1]
        assert f"transformer.layers.{index}.*" in excluded
        assert weights[f"transformer.layers.{index}.mlp.fc.weight"].dtype == torch.float16
    hf = json.loads((out / "hf_checkpoint" / "config.json").read_text())
    for layer in result.exclude_modules:
        assert f"{layer}.*" in hf["quantization_config"]["ignore"]
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["search"]["excluded"] == result.exclude_modules
    # the budget's outcome on every held-out text, each with its interval, and the one line naming the misses
    held = manifest["result"]["held_out"]
    assert set(held) == {"eval", "heldout"} and result.budget_summary.startswith("accuracy budget 1 %: ")
    for row in held.values():
        lo, hi = row["delta_pct_ci95"]
        assert lo <= row["delta_pct"] <= hi and row["budget_held"] == (row["delta_pct"] <= 1.0)
    exceeded = [split for split, row in held.items() if not row["budget_held"]]
    named = result.budget_summary.split("; held on")[0]
    assert ("EXCEEDED on " in named) == bool(exceeded) and all(f"{split} " in named for split in exceeded)
    counts = manifest["result"]["calibration"]
    assert counts["samples"] * counts["seq_len"] == counts["tokens"] <= counts["text_tokens"]
    runtime = json.loads((out / "embedded" / "runtime.json").read_text())
    assert runtime["exclude_modules"] == result.exclude_modules


def test_units_are_ranked_by_error_per_parameter():
    layer = torch.nn.Module()
    layer.small = torch.nn.Linear(4, 4, bias=False)  # 16 weights
    layer.big = torch.nn.Linear(4, 64, bias=False)  # 256 weights
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([layer])
    units = {"small": ["layers.0.small"], "big": ["layers.0.big"]}
    # the big unit adds twice the error but holds 16x the weights: keeping the small one first saves more share
    assert sensitivity.rank_units(model, units, {"small": 1.0, "big": 2.0}) == ["small", "big"]
    assert sensitivity.rank_units(model, units, {"small": 1.0, "big": 64.0}) == ["big", "small"]
