"""What the CI budget rule costs in kept share, and what it buys on text the search never saw (SmolLM2-135M).

The accuracy-budget search (``llm_quant.evaluation.sensitivity``) accepts a set of linears kept in higher precision
when its search-split perplexity change meets ``budget * margin``: under the ``point`` rule the measured change must,
under the ``ci`` rule the upper end of its paired 95 % interval must. This benchmark runs the search under each
(rule, margin) on the same quantized model and ranking -- probes are cached by prefix length, so the rules share
them and differ only in where they stop -- then measures each chosen set on the held-out texts: the bundled
``dialogue`` domain, the corpus' eval split and ``--text`` (prose you wrote; nothing here has seen it). Each row:
units kept, the decoder-linear weight share still quantized, the search-split change and every held-out change with
its 95 % interval, and whether the budget held there.

The chosen sets are measured as the search measures them (quantizers of the kept linears turned off in the model
calibrated with all of them); a build recalibrates with those linears excluded from the start, which moves the
numbers slightly (benchmarks/perplexity.py measures that path).

    .venv/bin/python benchmarks/budget_rule.py --text my_prose.txt                      # fp8, budget 1 %
    .venv/bin/python benchmarks/budget_rule.py --text my_prose.txt --qformat int4_awq --budget 5
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_quant.calibration import calibrate  # noqa: E402
from llm_quant.calibration.exclusions import precision_units, quantized_weight_share  # noqa: E402
from llm_quant.data import documents  # noqa: E402
from llm_quant.evaluation.perplexity import CI_BLOCK, Perplexity, delta_estimate, perplexity  # noqa: E402
from llm_quant.evaluation.sensitivity import InFullPrecision, rank_units, unit_errors  # noqa: E402
from llm_quant.pipeline import make_config, prepare  # noqa: E402
from quant_common.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from quant_common.search import search_ranked_prefix  # noqa: E402
from quant_common.uncertainty import Estimate  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402

RULES = (("point", 0.7), ("point", 1.0), ("ci", 1.0), ("ci", 0.7))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama")
    p.add_argument("--qformat", default="fp8")
    p.add_argument("--budget", type=float, default=1.0, help="perplexity increase allowed, %%")
    p.add_argument("--text", type=Path, required=True, help="held-out prose nothing here has seen")
    p.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    return p.parse_args()


def main() -> None:
    args = parse()
    with contextlib.redirect_stdout(sys.stderr):  # modelopt/transformers print progress; stdout is the table
        run(args)


def run(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    cfg, model_dir, source = make_config(args.model, overrides={"qformat": args.qformat, "device": "auto"})
    prep = prepare(cfg, eval_docs=documents.read_text_file(args.text), eval_label=f"{args.text.name} (--text)")
    split = prepare(cfg)  # the corpus' own eval split
    texts = {"text": prep.eval_windows, "eval split": split.eval_windows, "dialogue": prep.heldout_windows}
    texts = {k: w for k, w in texts.items() if w is not None and len(w)}
    reference = calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device)
    ref = {k: perplexity(reference, w, description=f"reference ({k})") for k, w in texts.items()}
    ref_search = perplexity(reference, prep.search_windows, description="reference (search split)")
    del reference
    model = calibrate.quantize(calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device), args.qformat,
                               prep.calib_batches, description=f"calibrating {args.qformat}")
    units = precision_units(model)
    ranked = rank_units(model, units, unit_errors(model, prep.search_windows, units))
    probes: dict[int, Estimate] = {}
    held: dict[int, dict[str, Estimate]] = {}

    def linears(k: int) -> list[str]:
        return [name for unit in ranked[:k] for name in units[unit]]

    def probe(chosen: list[str]) -> Estimate:
        k = len(chosen)
        if k not in probes:
            with InFullPrecision(model, linears(k)):
                probes[k] = delta_estimate(ref_search, perplexity(model, prep.search_windows, description=f"probe {k}"))
        return probes[k]

    def held_out(k: int) -> dict[str, Estimate]:
        if k not in held:
            with InFullPrecision(model, linears(k)):
                held[k] = {name: delta_estimate(ref[name], perplexity(model, w, description=f"{name} ({k})"))
                           for name, w in texts.items()}
        return held[k]

    rows = []
    for rule, margin in RULES:
        target = args.budget * margin
        found = search_ranked_prefix(ranked, probe, target, baseline=probe([]), rule=rule)
        k = len(found.excluded)
        with InFullPrecision(model, linears(k)):
            share = quantized_weight_share(model)
        rows.append({"rule": rule, "margin": margin, "target_pct": target, "met": found.met, "units_kept": k,
                     "quantized_weight_share": round(share, 4), "probes": found.probes,
                     "search": probes[k].to_dict(3), "held_out": {n: e.to_dict(3) for n, e in held_out(k).items()}})
        report(rows, args, source, prep, texts, ref, ref_search, time.perf_counter() - start)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, source: str, prep: Any, texts: dict[str, Any],
           ref: dict[str, Perplexity], ref_search: Perplexity, wall: float) -> None:
    def cell(est: dict[str, Any]) -> str:
        lo, hi = est["ci95"]
        mark = "" if est["value"] <= args.budget else " ✗"
        return f"{est['value']:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"

    names = list(texts)
    lines = ["| rule | margin | target % | units kept | quantized share | search Δ % [95 % CI] | "
             + " | ".join(f"{n} Δ % [95 % CI]" for n in names) + " |",
             "|---|---:|---:|---:|---:|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['margin']:.1f} | {r['target_pct']:.2f} | {r['units_kept']}"
                     f"{'' if r['met'] else ' (unmet)'} | {r['quantized_weight_share']:.3f} | {cell(r['search'])} | "
                     + " | ".join(cell(r["held_out"][n]) for n in names) + " |")
    tokens = {n: f"{int(w.numel())} tokens" for n, w in texts.items()}
    note = (f"\n{source}, --qformat {args.qformat}, budget {args.budget:g} % (✗: the change exceeds it). Search "
            f"split: {prep.texts['search']} ({int(prep.search_windows.numel())} tokens, reference ppl "
            f"{ref_search.ppl:.3f}). Held-out: {', '.join(f'{n} ({tokens[n]})' for n in names)}; --text is "
            f"{args.text}. Intervals: paired bootstrap over blocks of {CI_BLOCK} tokens, 1000 resamples, seed 0. "
            f"{prep.device}, {prep.dtype}; {wall:.0f} s so far.\nCPU: {cpu_name()}; flags: "
            f"{' '.join(cpu_flags()) or 'unknown'}\n")
    table = "\n".join(lines) + "\n" + note
    console = sys.__stdout__ or sys.stdout  # None only where Python runs without a console
    console.write(table + "\n")
    console.flush()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"budget_rule_{args.qformat}.json", {"rows": rows, "note": note})
    atomic_write_text(args.out / f"budget_rule_{args.qformat}.md", table)


if __name__ == "__main__":
    main()
