"""What an LLM build or eval says about its own numbers: perplexity changes with paired intervals over token blocks,
the calibration samples actually consumed, and the amax spread over calibration subsets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_quant import pipeline
from llm_quant.calibration.stability import half_subsets
from llm_quant.cli import app
from llm_quant.evaluation.perplexity import CI_BLOCK, Perplexity, block_sums, delta_estimate
from tests.llm_quant.helpers import tiny_config

torch = pytest.importorskip("torch")

# Prose written for this test (no corpus holds it): the user's own --text.
PROSE = """The harbour wall was built to keep out the winter storms, but in summer it became a promenade where
families walked after supper and old men argued about the weather. Children fished for crabs with bacon on a
string, and the gulls watched them with professional interest. Nobody remembered who had paid for the wall, only
that it had been there longer than the church clock, which had been wrong for as long as anyone could recall.

In the autumn the boats came in early and the nets were spread on the quay to dry. The smell of tar and salt hung
over the whole town, and the school closed for a week so that the older pupils could help with the catch."""


def scored(token_nll: np.ndarray) -> Perplexity:
    nll = float(token_nll.mean())
    return Perplexity(float(np.exp(nll)), nll, int(token_nll.size), token_nll)


def test_blocks_split_each_window_and_the_interval_shrinks_with_more_windows():
    rng = np.random.default_rng(0)
    sums, counts = block_sums(rng.random((3, 150)), 64)
    assert counts.tolist() == [64, 64, 22] * 3 and len(sums) == 9
    widths = []
    for windows in (2, 32):
        difficulty = rng.gamma(3.0, 1.0, (windows, 511))
        ref, quant = scored(difficulty), scored(difficulty + rng.normal(0.02, 0.3, (windows, 511)))
        est = delta_estimate(ref, quant)
        assert est.ci95[0] < est.value < est.ci95[1]
        assert est.value == pytest.approx(100 * (quant.ppl - ref.ppl) / ref.ppl)
        assert est.units == windows * -(-511 // CI_BLOCK)
        widths.append(est.width)
    assert widths[1] < 0.4 * widths[0]


def test_half_subsets_are_seeded_halves_in_batches():
    batches = list(torch.arange(40 * 8).view(40, 8).split(4))
    halves = half_subsets(batches, 3, seed=1)
    assert [[b.tolist() for b in h] for h in halves] == [[b.tolist() for b in h] for h in half_subsets(batches, 3, 1)]
    for half in halves:
        rows = torch.cat(half)
        assert 8 <= len(rows) <= 32 and all(len(b) <= 4 for b in half)
        assert len({tuple(r.tolist()) for r in rows}) == len(rows)  # without replacement


def test_eval_reports_intervals_budget_and_calibration_on_your_text(tiny_llama, tmp_path):
    text = tmp_path / "mine.txt"
    text.write_text(PROSE)
    result = CliRunner().invoke(app, [
        "eval", "--model", str(tiny_llama), "--qformat", "int8_wo", "--device", "cpu", "--calib-size", "1000",
        "--calib-seq-len", "64", "--eval-seq-len", "64", "--eval-tokens", "1024", "--text", str(text),
        "--accuracy-budget", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    lo, hi = report["delta_pct_ci95"]
    assert lo <= report["delta_pct"] <= hi and report["ci"]["paired"] and report["ci"]["count"] >= 2
    assert report["text"].endswith("mine.txt (--text)")
    assert report["budget_held"] == (report["delta_pct"] <= 0.01)
    held = {"eval": report["budget_held"], "heldout": report["heldout"]["budget_held"]}
    named = report["budget_summary"].split("; its 95 %")[0].split("; held on")[0]
    assert all((f"{split} " in named) == (not ok) for split, ok in held.items())
    assert report["search"]["rule"] == "ci" and len(report["search"]["delta_pct_ci95"]) == 2
    counts = report["calibration"]
    # 1000 samples asked for, the corpus split holds fewer whole 64-token samples: said, not hidden
    assert counts["requested_samples"] == 1000 and counts["samples"] < 1000 and counts["capped_by_text"]
    assert counts["tokens"] == counts["samples"] * 64 <= counts["text_tokens"]


def test_build_reports_calibration_stability_per_quantizer(tiny_llama, tmp_path):
    cfg, source = tiny_config(tiny_llama, tmp_path / "out", qformat="int8_sq", sq_activations="per_tensor",
                              calib_stability=2)
    result = pipeline.build(cfg, model_source=source)
    stability = json.loads((tmp_path / "out" / "build.json").read_text())["result"]["calib_stability"]
    assert stability == result.calib_stability
    assert stability["subsets"] == 2 and stability["tensors"] > 4 and stability["seconds_per_subset"] > 0
    names = [t["tensor"] for t in stability["most_unstable"]]
    assert all(name.endswith(("_quantizer", "_quantizer.pre_quant_scale")) for name in names)
    assert stability["plain_calibration_seconds"] > 0
    assert result.calibration["samples"] == 4 and result.calibration["tokens"] == 256


def test_per_token_activations_have_no_amax_to_compare(tiny_llama):
    """Per-token int8_sq inputs compute their scale per token at run time: only the weights' amax and the smoothing
    scales depend on the calibration data."""
    import transformers

    from llm_quant.calibration import calibrate
    from llm_quant.calibration.stability import quantizer_amax
    from llm_quant.config import CalibConfig
    from llm_quant.data import documents

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    stream = documents.tokenize_split(documents.mixed_corpus(), tok, "calib", 3)
    batches = documents.calibration_batches(stream, CalibConfig(size=4, seq_len=64))
    model = calibrate.quantize(calibrate.load_model(tiny_llama, dtype="float32", device="cpu"), "int8_sq", batches,
                               sq_activations="per_token", smoothquant_alpha=0.5)
    names = set(quantizer_amax(model))
    assert not any(name.endswith("proj.input_quantizer") for name in names)
    assert any(name.endswith("proj.weight_quantizer") for name in names)
    assert any(name.endswith("proj.input_quantizer.pre_quant_scale") for name in names)


def test_the_budget_line_names_each_text_over_the_budget_and_those_its_interval_reaches_past():
    from llm_quant.evaluation.perplexity import budget_line

    def row(delta: float, lo: float, hi: float, text: str) -> dict:
        return {"delta_pct": delta, "delta_pct_ci95": [lo, hi], "budget_held": delta <= 1.0,
                "budget_held_ci": hi <= 1.0, "text": text}

    rows = {"eval": row(1.31, 0.48, 2.10, "eval split"), "heldout": row(0.11, -0.92, 0.99, "dialogue"),
            "text": row(0.42, -0.28, 1.12, "mine.txt")}
    assert budget_line(1, rows) == ("accuracy budget 1 %: EXCEEDED on eval +1.31 % [+0.48, +2.10] (eval split); "
                                    "held on heldout, text; its 95 % interval reaches past the budget on text "
                                    "+0.42 % [-0.28, +1.12] (mine.txt)")
    assert budget_line(2, {"heldout": {**rows["heldout"], "budget_held": True, "budget_held_ci": True}}) == \
        "accuracy budget 2 %: held on heldout"
