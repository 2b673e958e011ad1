"""Real CUDA kernels against modelopt's fake quantization on a trained model (default: the bundled SmolLM2-135M):
perplexity on the held-out eval split and greedy text for a few prompts, per qformat, both on the GPU.

The fake-quant model is the numerical reference (issue 22: each real-kernel model within 0.5 % of it). Prints a
table and writes ``gpu_reference_agreement.json`` / ``.md``.

    python benchmarks/gpu_reference_agreement.py --out benchmarks/results [--model llama] [--qformats fp8,...]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_scale import _environment  # noqa: E402
from benchmarks.llm_runtime import PROMPTS, png_bytes, save_report  # noqa: E402


def _ppl(model: Any, windows: Any) -> float:
    from llm_quant.evaluation.perplexity import perplexity

    return perplexity(model, windows, description="perplexity").ppl


def _greedy(model: Any, tokenizer: Any, n: int) -> list[str]:
    from triton_backend.generation import Sampling, generate_ids

    opts = Sampling(max_new_tokens=n, end_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id or 0)
    return [tokenizer.decode(generate_ids(model, tokenizer.encode(p), opts)) for p in PROMPTS]


def agreement(model: str, qformat: str, work: Path, new_tokens: int) -> dict[str, Any]:
    import torch

    from llm_quant.pipeline import build, make_config, prepare
    from llm_quant.runtime import load_quantized

    cfg = make_config(model, overrides={"out": work / qformat, "device": "cuda", "qformat": qformat,
                                        "build_engine": False})[0]
    build(cfg)
    windows = prepare(cfg).eval_windows
    row: dict[str, Any] = {"qformat": qformat, "eval_tokens": int(windows.numel())}
    texts = {}
    for kernels in ("fake", "real"):
        quantized, tokenizer = load_quantized(work / qformat / "embedded", device="cuda", kernels=kernels)
        row[f"ppl_{kernels}"] = round(_ppl(quantized, windows), 4)
        texts[kernels] = _greedy(quantized, tokenizer, new_tokens)
        if kernels == "real":
            row["kernels"] = quantized.kernel_report.summary()
        del quantized
        torch.cuda.empty_cache()
    row["delta_pct"] = round(100 * (row["ppl_real"] - row["ppl_fake"]) / row["ppl_fake"], 3)
    row["greedy_same"] = f"{sum(a == b for a, b in zip(texts['fake'], texts['real'], strict=True))}/{len(PROMPTS)}"
    row["within_0.5pct"] = bool(math.isfinite(row["delta_pct"]) and abs(row["delta_pct"]) <= 0.5)
    return row


def _chart(rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([r["qformat"] for r in rows], [r["delta_pct"] for r in rows], color="tab:blue")
    for bound in (-0.5, 0.5):
        ax.axhline(bound, color="tab:red", linestyle="--", linewidth=1)
    ax.set_ylabel("perplexity, real kernels vs fake-quant (%)")
    return png_bytes(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama")
    parser.add_argument("--qformats", default="fp8,int8_sq,int8_wo,int4_awq")
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=Path("out/benchmarks/gpu_reference_agreement"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gpu_agree-"))
    rows = []
    for qformat in args.qformats.split(","):
        try:
            rows.append(agreement(args.model, qformat, work, args.new_tokens))
        except Exception as exc:  # noqa: BLE001 - one format's failure must not hide the others
            rows.append({"qformat": qformat, "error": f"{exc.__class__.__name__}: {str(exc)[:300]}"})
        print(rows[-1], flush=True)
    env = _environment()
    lines = [f"gpu_reference_agreement: {args.model}, {env['gpu']}, driver {env['driver']}, torch {env['torch']}", "",
             "| qformat | ppl fake-quant | ppl real kernels | Δ % | within 0.5 % | greedy same | kernels |",
             "|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['qformat']} | error: {r['error']} |")
        else:
            lines.append(f"| {r['qformat']} | {r['ppl_fake']} | {r['ppl_real']} | {r['delta_pct']} | "
                         f"{r['within_0.5pct']} | {r['greedy_same']} | {r['kernels']} |")
    text = "\n".join(lines)
    print(text)
    save_report(args.out, "gpu_reference_agreement", {"environment": env, "model": args.model, "rows": rows},
                text, _chart([r for r in rows if "error" not in r]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
