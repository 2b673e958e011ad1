"""int8_sq variants side by side: activation mode (per-tensor / per-token) x SmoothQuant alpha (global / per layer).

Perplexity increase over full precision on two held-out texts the calibration never saw (the corpus' eval split
and, with ``--prose FILE``, a text of another domain), and the greedy continuation of "The capital of France is".
Prints a table (CPU flags included); ``--json-out FILE`` writes it as JSON and a bar chart beside it (``.png``).

    python benchmarks/smoothquant_modes.py --model llama --prose my_prose.txt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.llm_runtime import cpu_flags

# (label, --sq-activations, --smoothquant-alpha, per-layer alpha search)
VARIANTS: tuple[tuple[str, str, float | None, bool], ...] = (
    ("per_tensor, modelopt alpha", "per_tensor", None, False),
    ("per_tensor, alpha 0.5", "per_tensor", 0.5, False),
    ("per_tensor, alpha per layer", "per_tensor", None, True),
    ("per_token, alpha 0.5", "per_token", 0.5, False),
    ("per_token, alpha per layer", "per_token", None, True),
)
PROMPT = "The capital of France is"


def greedy(model: Any, tokenizer: Any, prompt: str = PROMPT, tokens: int = 6) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))


def run(model_name: str, prose: Path | None, prose_seq_len: int, only: list[str] | None) -> dict[str, Any]:
    from llm_quant.calibration import calibrate
    from llm_quant.data import documents
    from llm_quant.evaluation.perplexity import perplexity
    from llm_quant.pipeline import make_config, prepare

    cfg, _, _ = make_config(model_name, overrides={"device": "cpu"})
    prep = prepare(cfg)
    texts = {"eval split": prep.eval_windows}
    if prose is not None:
        prose_docs = documents.read_text_file(prose)
        texts["prose"] = documents.tokenize_documents(prose_docs, prep.tokenizer).windows(prose_seq_len)
    model = calibrate.load_model(prep.model_dir, dtype=prep.dtype, device=prep.device)
    rows: list[dict[str, Any]] = [{"variant": "full precision", "greedy": greedy(model, prep.tokenizer),
                                   **{name: perplexity(model, w).ppl for name, w in texts.items()}}]
    reference = rows[0]
    del model
    for label, mode, alpha, search in VARIANTS:
        if only and not any(o in label for o in only):
            continue
        start = time.perf_counter()
        model = calibrate.load_model(prep.model_dir, dtype=prep.dtype, device=prep.device)
        model = calibrate.quantize(model, "int8_sq", prep.calib_batches, smoothquant_alpha=alpha,
                                   sq_activations=mode, alpha_search=search)
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {"variant": label, "calibrate_s": round(seconds, 1), "greedy": greedy(model, prep.tokenizer)}
        for name, windows in texts.items():
            ppl = perplexity(model, windows).ppl
            row[name] = ppl
            row[f"{name} Δ%"] = round(100.0 * (ppl - reference[name]) / reference[name], 2)
        report = getattr(model, "smoothquant_report", None)
        if report is not None and report.searched:
            row["alphas"] = sorted(set(report.alpha.values()))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        del model
    return {"model": str(prep.model_dir), "cpu": cpu_flags(), "calibration": cfg.calibration.model_dump(mode="json"),
            "texts": {name: {"windows": len(w), "seq_len": int(w.shape[1]) if len(w) else 0}
                      for name, w in texts.items()}, "rows": rows}


def table(result: dict[str, Any]) -> str:
    names = list(result["texts"])
    head = ["variant", *[f"{n} Δ ppl" for n in names], "greedy"]
    lines = [f"CPU: {result['cpu']}", f"texts: {result['texts']}", " | ".join(head)]
    for row in result["rows"]:
        deltas = [f"{row[f'{n} Δ%']:+.2f} %" if f"{n} Δ%" in row else f"ppl {row[n]:.3f}" for n in names]
        lines.append(" | ".join([row["variant"], *deltas, repr(row["greedy"])]))
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: Δ perplexity per variant, one bar per held-out text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["variant"] != "full precision"]
    names = list(result["texts"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ax.bar([x + i * width for x in range(len(rows))], [r[f"{name} Δ%"] for r in rows], width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(rows))])
    ax.set_xticklabels([r["variant"] for r in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("Δ perplexity vs full precision (%)")
    ax.set_title(f"int8_sq variants, {Path(result['model']).name}\n{result['cpu']}", fontsize=9)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama")
    parser.add_argument("--prose", type=Path, default=None, help="held-out text of another domain")
    parser.add_argument("--prose-seq-len", type=int, default=256)
    parser.add_argument("--only", nargs="*", help="run variants whose label contains one of these")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.model, args.prose, args.prose_seq_len, args.only)
    print(table(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
        plot(result, args.json_out.with_suffix(".png"))


if __name__ == "__main__":
    main()
