"""How far the fake-quant reference moves from *itself* — the noise floor for the int8-kernel exactness figures.

``benchmarks/llm_runtime.py`` compares the int8 kernels with modelopt's fake-quant model (argmax agreement, perplexity,
logits max |delta|, greedy text). A W8A8 model is discontinuous: every activation quantizer rounds, so a change in
the last float bit flips a few integers, each flip moves the next layer by a whole quantization step, and by a few
layers the two runs carry independent rounding noise. This benchmark measures that floor by perturbing the
reference in ways that change nothing but float rounding, and puts the int8 kernels in the same table:

- ``fake, N threads`` — the reference (the runtime's own fake-quant path), the row everything is compared with;
- ``fake, 1 thread`` — the same model, another thread count (oneDNN/MKL sum in another order);
- ``fake, embeddings x (1 + eps)`` — every input embedding scaled by 1 + ``--eps`` (default 1e-6, ~8 float32 ulps);
- ``fake, float64`` — the same model computed in float64 (more exact, not less);
- ``int8 kernels`` — ``load_quantized(kernels="int8")``.

Each variant runs in its own process, one after another. Same prompts and eval windows as llm_runtime.py.
Prints a table with the CPU flags, writes <out>/llm_reference_noise.{json,md,png}.

    .venv/bin/python benchmarks/llm_reference_noise.py --embedded OUT/embedded
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.llm_runtime import PROMPTS, _eval_data, _load, cpu_flags, png_bytes, save_report  # noqa: E402

VARIANTS = {  # name -> (kernels, threads: None = --threads, change)
    "fake, N threads": ("fake", None, None),
    "fake, 1 thread": ("fake", 1, None),
    "fake, embeddings x (1 + eps)": ("fake", None, "eps"),
    "fake, float64": ("fake", None, "float64"),
    "int8 kernels": ("int8", None, None),
}
REFERENCE = "fake, N threads"


def _measure(name: str, args: argparse.Namespace, windows: Any, conn: Any) -> None:
    import torch
    import transformers

    from llm_quant.evaluation.perplexity import perplexity
    from triton_backend.generation import Sampling, generate_ids

    transformers.logging.set_verbosity_error()
    kernels, threads, change = VARIANTS[name]
    torch.set_num_threads(threads or args.threads)
    model, tok, _ = _load("int8" if kernels == "int8" else "fake", args.embedded)
    if change == "float64":
        model = model.double()
    elif change == "eps":
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(1 + args.eps)
    opts = Sampling(max_new_tokens=args.new_tokens, end_id=-1, pad_id=tok.pad_token_id or 0)
    with torch.inference_mode():
        greedy = [list(map(int, generate_ids(model, tok(p)["input_ids"], opts))) for p in PROMPTS]
        ppl = perplexity(model, windows, description=name).ppl
        argmax = torch.cat([model(w[None]).logits[0].argmax(-1) for w in windows]).numpy()
        head = model(windows[:1, : args.logit_rows]).logits[0].float().numpy()
    conn.send({"greedy": greedy, "ppl": ppl, "argmax": argmax, "head": head})


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def run(args: argparse.Namespace) -> dict:
    windows, _ = _eval_data(args)
    ctx = mp.get_context("spawn")
    raw: dict[str, dict] = {}
    for name in VARIANTS:  # one process at a time: each loads a full model
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_measure, args=(name, args, windows, child))
        proc.start()
        if not parent.poll(args.timeout):
            proc.kill()
            raise SystemExit(f"the '{name}' variant did not finish within {args.timeout} s")
        raw[name] = parent.recv()
        proc.join()
        print(f"{name}: perplexity {raw[name]['ppl']:.4f}", flush=True)
    ref = raw[REFERENCE]
    rows = []
    for name, r in raw.items():
        rows.append({
            "variant": name, "ppl": r["ppl"], "ppl_delta_pct": 100 * (r["ppl"] - ref["ppl"]) / ref["ppl"],
            "argmax_agreement": float((r["argmax"] == ref["argmax"]).mean()),
            "logits_max_abs_delta": float(abs(r["head"] - ref["head"]).max()),
            "greedy_equal": sum(a == b for a, b in zip(r["greedy"], ref["greedy"], strict=True)),
            "first_difference": [_first_difference(a, b) for a, b in zip(r["greedy"], ref["greedy"], strict=True)],
        })
    summary = {"cpu": cpu_flags(), "threads": args.threads, "eps": args.eps, "eval_tokens": int(windows.numel()),
               "prompts": len(PROMPTS), "new_tokens": args.new_tokens}
    return {"summary": summary, "rows": rows}


def table(result: dict) -> str:
    s = result["summary"]
    lines = [f"CPU: {s['cpu']}; N = {s['threads']} threads; eps {s['eps']:g}; {s['eval_tokens']} eval tokens; "
             f"greedy {s['new_tokens']} tokens x {s['prompts']} prompts; all rows against '{REFERENCE}'", "",
             "| variant | perplexity | delta % | argmax agreement % | logits max abs delta | greedy equal | "
             "first differing token per prompt |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        first = ", ".join("-" if i is None else str(i) for i in r["first_difference"])
        lines.append(f"| {r['variant']} | {r['ppl']:.4f} | {r['ppl_delta_pct']:+.3f} | "
                     f"{100 * r['argmax_agreement']:.2f} | {r['logits_max_abs_delta']:.3g} | "
                     f"{r['greedy_equal']}/{s['prompts']} | {first} |")
    return "\n".join(lines)


def plot(result: dict) -> bytes:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["variant"] != REFERENCE]
    names = [r["variant"].replace("fake, ", "fake,\n") for r in rows]
    colors = ["#2ca02c" if r["variant"].startswith("int8") else "#888888" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, values, title in zip(axes, (
            [abs(r["ppl_delta_pct"]) for r in rows], [100 * (1 - r["argmax_agreement"]) for r in rows],
            [r["greedy_equal"] for r in rows]),
            ("|perplexity delta| %", "argmax disagreement %", "greedy texts equal"), strict=True):
        ax.bar(names, values, color=colors)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"vs the fake-quant reference; grey: the reference perturbed; {result['summary']['cpu']}", fontsize=8)
    return png_bytes(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedded", type=Path, required=True, help="<build out>/embedded of an int8_sq build")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eps", type=float, default=1e-6, help="relative change of the input embeddings")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--prefill-tokens", type=int, default=1, help=argparse.SUPPRESS)  # _eval_data's prompt slice
    p.add_argument("--logit-rows", type=int, default=64, help="positions whose logits are compared")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per variant")
    p.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.embedded.is_dir():
        raise SystemExit(f"{args.embedded} is not a directory: pass --embedded <llm-quant build --out>/embedded")
    result = run(args)
    text = table(result)
    print(text)
    save_report(args.out, "llm_reference_noise", result, text, plot(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
