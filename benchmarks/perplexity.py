"""Perplexity of SmolLM2-135M (the llama preset's offline model): full precision vs each qformat x SmoothQuant
activation mode, uniform and with --accuracy-budget, on two held-out texts the search never saw.

Held-out texts: the bundled ``dialogue`` domain (never seen by calibration or the search), and ``--text FILE``
(e.g. fresh prose you wrote; default: the ``mixed`` set's eval split, unseen documents of the search's domains).
Each row: Δ perplexity on both, ``quantized_weight_share`` (decoder-linear parameters stored quantized) and the
row's wall time. One process: data and the reference perplexities are computed once, every row is measured on
the same token windows. Prints a table with the CPU flags, writes <out>/perplexity.json, .md and .png.

    .venv/bin/python benchmarks/perplexity.py                      # defaults sized for a 2-core CPU
    .venv/bin/python benchmarks/perplexity.py --text my_prose.txt --qformats fp8 --budgets fp8=1
    .venv/bin/python benchmarks/perplexity.py --qformats int8_sq --sq-modes per_tensor,per_token
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import sys
import time
from pathlib import Path

from llm_quant.calibration import calibrate
from llm_quant.calibration.exclusions import quantized_weight_share
from llm_quant.data import documents
from llm_quant.evaluation.perplexity import perplexity
from llm_quant.evaluation.sensitivity import search_exclusions
from llm_quant.pipeline import make_config, prepare
from quant_common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from vision.evaluation.bench import cpu_flags, cpu_name


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama")
    p.add_argument("--qformats", default="int8_sq,fp8,int4_awq")
    p.add_argument("--sq-modes", default="per_tensor",
                   help="SmoothQuant activation modes for int8_sq rows (per_tensor[,per_token] where supported)")
    p.add_argument("--budgets", default="int8_sq=3,fp8=1,int4_awq=5", help="qformat=PCT,... (others: uniform only)")
    p.add_argument("--text", type=Path, default=None, help="second held-out text (default: the eval split)")
    p.add_argument("--calib-dataset", default="mixed")
    p.add_argument("--calib-size", type=int, default=16)
    p.add_argument("--calib-seq-len", type=int, default=256)
    p.add_argument("--eval-seq-len", type=int, default=256)
    p.add_argument("--eval-tokens", type=int, default=8192, help="held-out tokens per text (search: half)")
    p.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    return p.parse_args()


def main() -> None:
    args = parse()
    with contextlib.redirect_stdout(sys.stderr):  # modelopt/transformers print progress; stdout is the table
        run(args)


def quantize_kwargs(qformat: str, mode: str) -> dict:
    """``sq_activations`` for int8_sq rows; this checkout's calibrate.quantize may not take it yet."""
    if qformat != "int8_sq":
        return {}
    if "sq_activations" in inspect.signature(calibrate.quantize).parameters:
        return {"sq_activations": mode}
    if mode != "per_tensor":
        sys.exit(f"error: --sq-modes {mode}: this llm_quant has only per_tensor SmoothQuant activations; "
                 "drop the mode or update llm_quant")
    return {}


def run(args: argparse.Namespace) -> None:
    budgets = {k: float(v) for k, v in (item.split("=") for item in args.budgets.split(",") if item)}
    for mode in [m for m in args.sq_modes.split(",") if m]:  # an unsupported mode fails before any measurement
        quantize_kwargs("int8_sq", mode)
    cfg, model_dir, source = make_config(args.model, overrides={"qformat": "full_prec", "device": "auto"},
                                         calib={"dataset": args.calib_dataset, "size": args.calib_size,
                                                "seq_len": args.calib_seq_len},
                                         eval_opts={"seq_len": args.eval_seq_len, "max_tokens": args.eval_tokens})
    eval_docs = documents.read_text_file(args.text) if args.text else None
    prep = prepare(cfg, eval_docs=eval_docs, eval_label=f"{args.text.name} (--text)" if args.text else None)
    texts = {"eval": prep.eval_windows}
    if prep.heldout_windows is not None and len(prep.heldout_windows):
        texts = {"heldout": prep.heldout_windows, **texts}
    meta = {"model": source, "texts": {k: f"{prep.texts[k]} ({int(w.numel())} tokens)" for k, w in texts.items()},
            "search": f"{prep.texts['search']} ({int(prep.search_windows.numel())} tokens)",
            "calibration": f"{prep.texts['calib']}, {args.calib_size}x{args.calib_seq_len} tokens",
            "device": prep.device, "dtype": prep.dtype, "cpu": cpu_name(), "cpu_flags": cpu_flags()}
    t0 = time.perf_counter()
    ref_model = calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device)
    ref = {k: perplexity(ref_model, w, description=f"reference ({k})").ppl for k, w in texts.items()}
    ref_search = perplexity(ref_model, prep.search_windows, description="reference (search split)")
    del ref_model
    rows = [row("full_prec", "-", "-", ref, ref, 0.0, 0, time.perf_counter() - t0)]
    report(rows, meta, args.out)
    modes = [m for m in args.sq_modes.split(",") if m]
    for qformat in [q for q in args.qformats.split(",") if q]:
        for mode in modes if qformat == "int8_sq" else ["-"]:
            kwargs = quantize_kwargs(qformat, mode)
            t0 = time.perf_counter()
            model = calibrate.quantize(calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device),
                                       qformat, prep.calib_batches, description=f"calibrating {qformat}", **kwargs)
            ppl = {k: perplexity(model, w, description=f"{qformat} ({k})").ppl for k, w in texts.items()}
            rows.append(row(qformat, mode, "uniform", ref, ppl, quantized_weight_share(model), 0,
                            time.perf_counter() - t0))
            report(rows, meta, args.out)
            if qformat not in budgets:
                continue
            t0 = time.perf_counter()
            search = search_exclusions(model, prep.search_windows, ref_search, budgets[qformat])
            del model
            model = calibrate.quantize(calibrate.load_model(model_dir, dtype=prep.dtype, device=prep.device),
                                       qformat, prep.calib_batches, exclude_modules=search.excluded,
                                       description=f"calibrating {qformat} (mixed)", **kwargs)
            ppl = {k: perplexity(model, w, description=f"{qformat} budget ({k})").ppl for k, w in texts.items()}
            rows.append(row(qformat, mode, f"budget {budgets[qformat]:g} %", ref, ppl, quantized_weight_share(model),
                            len(search.excluded_units), time.perf_counter() - t0, search=search.to_dict()))
            del model
            report(rows, meta, args.out)


def row(qformat, mode, precision, ref, ppl, share, units, wall, **extra) -> dict:
    return {"qformat": qformat, "mode": mode, "precision": precision, "ppl": {k: round(v, 4) for k, v in ppl.items()},
            "delta_pct": {k: round(100 * (ppl[k] - ref[k]) / ref[k], 3) for k in ppl},
            "quantized_weight_share": round(share, 4), "units_high_precision": units, "wall_s": round(wall, 1),
            **extra}


def report(rows: list[dict], meta: dict, out: Path) -> None:
    keys = list(meta["texts"])
    header = ("| qformat | SQ activations | precision | " + " | ".join(f"Δ ppl {k}" for k in keys)
              + " | quantized weight share | units kept | wall s |")
    lines = [header, "|---|---|---|" + "---:|" * (len(keys) + 3)]
    lines += [f"| {r['qformat']} | {r['mode']} | {r['precision']} | "
              + " | ".join(f"{r['delta_pct'][k]:+.2f} %" for k in keys)
              + f" | {r['quantized_weight_share']:.3f} | {r['units_high_precision']} | {r['wall_s']:.0f} |"
              for r in rows]
    texts = "; ".join(f"{k}: {v}" for k, v in meta["texts"].items())
    note = (f"\n{meta['model']} on {meta['device']} ({meta['dtype']}). Held-out texts: {texts}. Search: "
            f"{meta['search']}. Calibration: {meta['calibration']}. Units: qkv / o / gate+up / down of one layer.\n"
            f"CPU: {meta['cpu']}; flags: {' '.join(meta['cpu_flags']) or 'unknown'}\n")
    table = "\n".join(lines) + "\n" + note
    console = sys.__stdout__ or sys.stdout  # None only where Python runs without a console
    console.write(table + "\n")  # stdout itself carries modelopt's prints (redirected in main)
    console.flush()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "perplexity.json", {"meta": meta, "rows": rows})
    atomic_write_text(out / "perplexity.md", table)
    atomic_write_bytes(out / "perplexity.png", plot(rows, keys, Path(str(meta["model"])).name))


def plot(rows: list[dict], keys: list[str], model: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quant = [r for r in rows if r["qformat"] != "full_prec"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(quant)), 4.5))
    width = 0.8 / max(1, len(keys))
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(quant))]
        bars = ax.bar(xs, [r["delta_pct"][key] for r in quant], width, label=f"Δ on {key}")
        ax.bar_label(bars, fmt="%+.2f", fontsize=7)
    labels = [f"{r['qformat']}" + (f" {r['mode']}" if r["mode"] != "-" else "")
              + f"\n{r['precision']}\nshare {r['quantized_weight_share']:.2f}" for r in quant]
    ax.set_xticks(range(len(quant)), labels, fontsize=7)
    ax.set_ylabel("perplexity increase vs full precision (%)")
    ax.set_title(f"{model[:40]}: uniform vs per-linear budget", fontsize=10)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    main()
