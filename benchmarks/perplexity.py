"""Perplexity of SmolLM2-135M (the llama preset's offline model): full precision vs int8_sq, fp8, int4_awq,
each uniform and with --accuracy-budget, on held-out text that neither calibration nor the layer search saw.

One process: data and the reference perplexity are computed once; every row is measured on the same token
windows. Prints a table, writes <out>/perplexity.json, perplexity.md and perplexity.png.

    .venv/bin/python benchmarks/perplexity.py                      # defaults sized for a 2-core CPU
    .venv/bin/python benchmarks/perplexity.py --eval-tokens 8192 --calib-size 64
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from llm_quant import calibrate
from llm_quant.evaluate import perplexity
from llm_quant.pipeline import make_config, prepare
from llm_quant.sensitivity import search_exclusions
from quant_common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama")
    p.add_argument("--qformats", default="int8_sq,fp8,int4_awq")
    p.add_argument("--budgets", default="int8_sq=3,fp8=1,int4_awq=3", help="qformat=PCT,...")
    p.add_argument("--calib-size", type=int, default=8)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens (search uses half as many)")
    p.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    return p.parse_args()


def main() -> None:
    args = parse()
    with contextlib.redirect_stdout(sys.stderr):  # modelopt/transformers print progress; stdout is the table
        run(args)


def run(args: argparse.Namespace) -> None:
    budgets = {k: float(v) for k, v in (item.split("=") for item in args.budgets.split(",") if item)}
    rows: list[dict] = []
    cfg, model_dir, source = make_config(args.model, overrides={"qformat": "full_prec", "device": "auto"},
                                         calib={"size": args.calib_size, "seq_len": args.calib_seq_len},
                                         eval_opts={"seq_len": args.eval_seq_len, "max_tokens": args.eval_tokens})
    prep = prepare(cfg)
    meta = {"model": source, "eval_tokens": int(prep.eval_windows.numel()), "search_tokens":
            int(prep.search_windows.numel()), "calib_sequences": args.calib_size, "calib_seq_len": args.calib_seq_len,
            "device": prep.device, "dtype": prep.dtype}
    t0 = time.perf_counter()
    ref_model = calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device)
    ref = perplexity(ref_model, prep.eval_windows, description="reference")
    ref_search = perplexity(ref_model, prep.search_windows, description="reference (search split)").ppl
    del ref_model
    rows.append(row("full_prec", "-", ref.ppl, ref.ppl, 0, time.perf_counter() - t0, ref.tokens))
    report(rows, meta, args.out)
    for qformat in [q for q in args.qformats.split(",") if q]:
        t0 = time.perf_counter()
        model = calibrate.quantize(calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device), qformat,
                                   prep.calib_batches, description=f"calibrating {qformat}")
        quant = perplexity(model, prep.eval_windows, description=f"{qformat} perplexity")
        rows.append(row(qformat, "uniform", ref.ppl, quant.ppl, 0, time.perf_counter() - t0, quant.tokens))
        report(rows, meta, args.out)
        if qformat not in budgets:
            continue
        t0 = time.perf_counter()
        search = search_exclusions(model, prep.search_windows, ref_search, budgets[qformat])
        del model
        model = calibrate.quantize(calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device), qformat,
                                   prep.calib_batches, exclude_layers=search.excluded,
                                   description=f"calibrating {qformat} (mixed)")
        quant = perplexity(model, prep.eval_windows, description=f"{qformat} budget perplexity")
        del model
        rows.append(row(qformat, f"budget {budgets[qformat]:g} %", ref.ppl, quant.ppl, len(search.excluded),
                        time.perf_counter() - t0, quant.tokens, search=search.to_dict()))
        report(rows, meta, args.out)


def row(qformat, mode, ref, ppl, kept, wall, tokens, **extra) -> dict:
    return {"qformat": qformat, "mode": mode, "ppl": round(ppl, 4), "delta_pct": round(100 * (ppl - ref) / ref, 3),
            "layers_high_precision": kept, "wall_s": round(wall, 1), "tokens": tokens, **extra}


def report(rows: list[dict], meta: dict, out: Path) -> None:
    header = "| qformat | mode | perplexity | Δ vs full precision | layers kept in higher precision | wall s |"
    lines = [header, "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['qformat']} | {r['mode']} | {r['ppl']:.3f} | {r['delta_pct']:+.2f} % | "
              f"{r['layers_high_precision']} | {r['wall_s']:.0f} |" for r in rows]
    note = (f"\n{meta['model']} on {meta['device']} ({meta['dtype']}); {meta['eval_tokens']} held-out tokens "
            f"(eval split), layer search on {meta['search_tokens']} other tokens, calibration "
            f"{meta['calib_sequences']}x{meta['calib_seq_len']} tokens.\n")
    table = "\n".join(lines) + "\n" + note
    sys.__stdout__.write(table + "\n")  # stdout itself carries modelopt's prints (redirected in main)
    sys.__stdout__.flush()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "perplexity.json", {"meta": meta, "rows": rows})
    atomic_write_text(out / "perplexity.md", table)
    atomic_write_bytes(out / "perplexity.png", plot(rows))


def plot(rows: list[dict]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quant = [r for r in rows if r["qformat"] != "full_prec"]
    labels = [f"{r['qformat']}\n{r['mode']}\n({r['layers_high_precision']} kept)" for r in quant]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(quant)), 4))
    colors = ["tab:red" if r["mode"] == "uniform" else "tab:green" for r in quant]
    bars = ax.bar(range(len(quant)), [r["delta_pct"] for r in quant], color=colors)
    ax.bar_label(bars, fmt="%+.1f %%")
    ax.set_xticks(range(len(quant)), labels, fontsize=8)
    ax.set_ylabel("perplexity increase vs full precision (%)")
    ax.set_title("SmolLM2-135M, held-out text: uniform vs accuracy-budgeted mixed precision")
    ax.axhline(0, color="black", linewidth=0.8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    main()
