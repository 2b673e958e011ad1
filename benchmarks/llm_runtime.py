"""The embedded LLM runtime: full precision vs modelopt fake-quant vs real int8 kernels, in one run.

Variants: fp32 (the base model), fake (modelopt fake-quant, the reference), int8 (int8 kernels; activations as the
build's runtime.json says: static per-tensor, or per-token for a default int8_sq build), and the per-token pair
from the same build: int8_pt (``load_quantized`` with runtime.json's
``sq_activations: per_token``)
and fake_pt (its float reference: fake-quant with each W8A8 input quantized per token by the same formula;
untimed). Each variant runs in its own process (so peak RSS is its own), all three loaded at once and timed in turns (the
order rotates each round; medians over rounds), on the same prompts and the same held-out windows:
prefill tokens/s (one forward over a >= 256-token prompt, logits of the last position only, as generate() asks
with ``logits_to_keep=1``), decode tokens/s (greedy, one request at a time, and
8 requests batched), peak / steady RSS, bytes of the quantized linears, perplexity on the eval split. The int8 and
fake-quant variants are compared token for token (argmax agreement, logits max |delta|, greedy text).
Prints a table with the CPU flags, writes <out>/llm_runtime.{json,md,png}.

    llm-quant build --model llama --qformat int8_sq --out /tmp/i8k_llama
    .venv/bin/python benchmarks/llm_runtime.py --embedded /tmp/i8k_llama/embedded --threads 2
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from quant_common.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics state that",
    "To make a cup of tea, first",
]
VARIANTS = ("fp32", "fake", "int8", "int8_pt", "fake_pt")
TIMED = ("fp32", "fake", "int8", "int8_pt")
# (int8 variant, its fake-quant reference)
PAIRS = (("int8", "fake"), ("int8_pt", "fake_pt"))
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "unknown"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return f"{model} ({os.cpu_count()} cores); " + " ".join(f for f in FLAGS if f in flags)


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _load(variant: str, embedded: Path) -> tuple[Any, Any, dict]:
    from llm_quant.runtime.cpu.int8_linear import linear_weight_bytes
    from llm_quant.runtime.embedded import load_quantized, load_reference
    from triton_backend.generation import fold_quantized_weights

    if variant == "fp32":
        model, tok = load_reference(embedded)
        return model, tok, {"linear_bytes": linear_weight_bytes(model)}
    if variant == "int8_pt":  # the runtime's own path: runtime.json says per_token
        embedded = _with_runtime_json(embedded, sq_activations="per_token")
    model, tok = load_quantized(embedded, kernels="int8" if variant.startswith("int8") else "fake")
    info: dict = {}
    if variant == "fake_pt":
        info["per_token_quantizers"] = _per_token_reference(model)
    if variant.startswith("int8"):
        info["kernels"] = model.kernel_report.summary()
        info["int8_linears"] = sorted(n for n, k in model.kernel_report.kernels.items() if k.startswith("int8"))
    fold_quantized_weights(model)  # what the served runtime does today
    info["linear_bytes"] = linear_weight_bytes(model)
    return model, tok, info


def _with_runtime_json(embedded: Path, **changes: str) -> Path:
    """A copy of the embedded folder (small: state and tokenizer; the base model is named by absolute path) whose
    runtime.json carries ``changes``."""
    import shutil
    import tempfile

    from llm_quant.runtime.embedded import base_model_path, read_runtime_json


    meta = read_runtime_json(embedded)
    meta["base_model"] = str(base_model_path(embedded, meta))
    copy = Path(tempfile.mkdtemp(prefix="tq-bench-")) / "embedded"
    shutil.copytree(embedded, copy)
    atomic_write_json(copy / "runtime.json", {**meta, **changes})
    return copy


def _per_token_reference(model: Any) -> int:
    """Switch every enabled 8-bit input quantizer of a W8A8 linear to the per-token formula in float32:
    v = x * pre_quant_scale; amax per row; scale = 127 / amax (0 where amax <= 2**-24);
    fake-quant = clamp(round(v * scale), -127, 127) / scale (0 where scale is 0). Returns how many were switched."""
    import types

    import torch

    def forward(self: Any, x: Any) -> Any:
        v = x.float() if self.pre_quant_scale is None else x.float() * self.pre_quant_scale.float()
        amax = v.abs().amax(dim=-1, keepdim=True)
        scale = torch.where(amax > 2.0 ** -24, 127.0 / amax.clamp_min(2.0 ** -24), torch.zeros_like(amax))
        q = torch.round(v * scale).clamp(-127.0, 127.0)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.where(scale > 0, q / safe, torch.zeros_like(q)).to(x.dtype)

    switched = 0
    for module in model.modules():
        inq, wq = getattr(module, "input_quantizer", None), getattr(module, "weight_quantizer", None)
        if inq is not None and wq is not None and inq.is_enabled and wq.is_enabled and inq.num_bits == 8 == wq.num_bits:
            inq.forward = types.MethodType(forward, inq)
            switched += 1
    return switched


def _quantized_linear_bytes(model: Any, names: list[str]) -> int:
    total = 0
    for name in names:
        module = model.get_submodule(name)
        total += sum(t.numel() * t.element_size() for t in [*module.parameters(False), *module.buffers(False)])
    return total


class _Worker:
    """One variant loaded in its own process (its own peak RSS), answering timing requests one at a time."""

    def __init__(self, variant: str, args: argparse.Namespace, windows: Any, prefill_ids: Any) -> None:
        import torch
        import transformers

        transformers.logging.set_verbosity_error()  # end_id -1 (fixed-length decode) warns at every call
        torch.set_num_threads(args.threads)
        self.torch, self.args, self.windows, self.prefill_ids = torch, args, windows, prefill_ids
        self.model, tok, self.info = _load(variant, args.embedded)
        self.info["rss_loaded_mb"] = _rss_mb()
        self.prompts = [tok(p)["input_ids"] for p in PROMPTS]
        from triton_backend.generation import Sampling

        # end_id -1: every prompt decodes exactly new_tokens tokens
        self.opts = Sampling(max_new_tokens=args.new_tokens, end_id=-1, pad_id=tok.pad_token_id or 0)
        self.decode(warmup=True)

    def prefill(self) -> float:
        with self.torch.inference_mode():
            t0 = time.perf_counter()
            self.model(self.prefill_ids, logits_to_keep=1)
            return self.prefill_ids.shape[1] / (time.perf_counter() - t0)

    def decode(self, warmup: bool = False) -> float:
        from dataclasses import replace

        from triton_backend.generation import generate_ids

        opts = replace(self.opts, max_new_tokens=4) if warmup else self.opts
        texts, t0, new = [], time.perf_counter(), 0
        for ids in self.prompts[: 1 if warmup else None]:
            out = generate_ids(self.model, ids, opts)
            new += len(out)
            texts.append(out)
        self.info["greedy"] = texts
        return new / (time.perf_counter() - t0)

    def batch8(self) -> float:
        from triton_backend.generation import generate_batch

        batch = [self.prompts[i % len(self.prompts)] for i in range(8)]
        t0 = time.perf_counter()
        outs = generate_batch(self.model, batch, [self.opts] * 8)
        return sum(len(o) for o in outs) / (time.perf_counter() - t0)

    def finish(self) -> dict:
        from llm_quant.evaluation.perplexity import perplexity


        torch, model, windows = self.torch, self.model, self.windows
        if len(self.info["greedy"]) < len(PROMPTS):  # an untimed variant: its greedy text once
            self.decode()
        self.info["ppl"] = perplexity(model, windows, description="perplexity").ppl
        with torch.inference_mode():
            # plain numpy across the process boundary (torch tensors would travel as shared-memory handles)
            self.info["argmax"] = torch.cat([model(w[None]).logits[0].argmax(-1) for w in windows]).numpy()
            self.info["logits_head"] = model(windows[:1, : self.args.logit_rows]).logits[0].float().numpy()
        names = self.info.get("int8_linears") or []
        self.info["quantized_linear_bytes"] = _quantized_linear_bytes(model, names) if names else None
        self.info["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self.info


def _serve(variant: str, args: argparse.Namespace, windows: Any, prefill_ids: Any, conn: Any) -> None:
    worker = _Worker(variant, args, windows, prefill_ids)
    conn.send("ready")
    while True:
        command = conn.recv()
        conn.send(getattr(worker, command)())
        if command == "finish":
            return


def _eval_data(args: argparse.Namespace) -> tuple[Any, Any]:
    import transformers

    from llm_quant.data.documents import builtin_corpus, tokenize_split
    from llm_quant.runtime import load_quantized  # noqa: F401 - fail early on a missing runtime

    tok = transformers.AutoTokenizer.from_pretrained(str(args.embedded))
    stream = tokenize_split(builtin_corpus(), tok, "eval")
    windows = stream.windows(args.eval_seq_len, max_tokens=args.eval_tokens)
    prefill = stream.ids[: args.prefill_tokens][None]
    if prefill.shape[1] < args.prefill_tokens:
        raise SystemExit(f"the eval split has only {prefill.shape[1]} tokens: lower --prefill-tokens")
    return windows, prefill


def run(args: argparse.Namespace) -> dict:
    """All three variants stay loaded (one process each) and are timed in turns, rotating the order each round,
    so load from other jobs on a shared machine falls on every variant alike; medians over the rounds."""
    windows, prefill = _eval_data(args)
    ctx = mp.get_context("spawn")
    conns, procs = {}, []
    for variant in VARIANTS:  # one at a time: loading is memory-heavy
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(variant, args, windows, prefill, child))
        proc.start()
        procs.append(proc)
        if parent.recv() != "ready":
            raise SystemExit(f"the {variant} worker failed to load")
        conns[variant] = parent
    timings: dict[str, dict[str, list[float]]] = {v: {"prefill_tok_s": [], "decode_tok_s": [],
                                                      "decode_batch8_tok_s": []} for v in VARIANTS}
    for round_ in range(args.rounds):
        shift = round_ % len(TIMED)
        order = TIMED[shift:] + TIMED[:shift]
        for command, key in (("prefill", "prefill_tok_s"), ("decode", "decode_tok_s"),
                             ("batch8", "decode_batch8_tok_s")):
            for variant in order:
                conns[variant].send(command)
                timings[variant][key].append(conns[variant].recv())
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{v} decode {timings[v]['decode_tok_s'][-1]:.2f} tok/s" for v in TIMED), flush=True)
    results: dict[str, dict] = {}
    for variant in VARIANTS:
        conns[variant].send("finish")
        results[variant] = conns[variant].recv()
        results[variant].update({k: statistics.median(v) if v else float("nan") for k, v in timings[variant].items()})
        results[variant]["samples"] = timings[variant]
    for proc in procs:
        proc.join()
    fp32, int8 = results["fp32"], results["int8"]
    summary: dict[str, Any] = {
        "cpu": cpu_flags(), "threads": args.threads, "prefill_tokens": args.prefill_tokens,
        "new_tokens": args.new_tokens, "eval_tokens": int(windows.numel()), "prompts": len(PROMPTS),
        "kernels": int8.get("kernels"), "kernels_per_token": results["int8_pt"].get("kernels"),
    }
    for real_name, ref_name in PAIRS:
        real, ref = results[real_name], results[ref_name]
        summary[f"{real_name}_vs_{ref_name}"] = {
            "argmax_agreement": float((ref["argmax"] == real["argmax"]).mean()),
            "logits_max_abs_delta": float(abs(ref["logits_head"] - real["logits_head"]).max()),
            "ppl_delta_pct": 100 * (real["ppl"] - ref["ppl"]) / ref["ppl"],
            "greedy_equal": sum(a == b for a, b in zip(ref["greedy"], real["greedy"], strict=True)),
        }
    for real_name in ("int8", "int8_pt"):
        real = results[real_name]
        summary[f"{real_name}_vs_fp32"] = {key: real[f"{key}_tok_s"] / fp32[f"{key}_tok_s"]
                                           for key in ("prefill", "decode", "decode_batch8")}
    names = int8.get("int8_linears") or []
    if names:
        fp32_bytes = _fp32_bytes_of(args.embedded, names)
        summary["quantized_linears_mb"] = {"int8": int8["quantized_linear_bytes"] / 2**20,
                                           "fp32": fp32_bytes / 2**20,
                                           "ratio": int8["quantized_linear_bytes"] / fp32_bytes}
    rows = [{"variant": v, **{k: results[v].get(k) for k in ("prefill_tok_s", "decode_tok_s", "decode_batch8_tok_s",
                                                          "ppl", "rss_loaded_mb", "rss_peak_mb", "linear_bytes",
                                                          "samples")}}
            for v in VARIANTS]
    return {"summary": summary, "rows": rows, "greedy": {v: results[v]["greedy"] for v in VARIANTS}}


def _fp32_bytes_of(embedded: Path, names: list[str]) -> int:
    """Bytes the same linears take in float32, read from the base checkpoint's shapes."""
    from safetensors import safe_open

    from llm_quant.runtime.embedded import base_model_path, read_runtime_json


    base = base_model_path(embedded, read_runtime_json(embedded))
    total = 0
    for shard in base.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.rsplit(".", 1)[0] in names:
                    numel = 1
                    for dim in handle.get_slice(key).get_shape():
                        numel *= dim
                    total += 4 * numel
    return total


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}"  # NaN: untimed


def table(result: dict) -> str:
    s = result["summary"]
    lines = [f"CPU: {s['cpu']}; {s['threads']} threads; prefill {s['prefill_tokens']} tokens (last-position "
             f"logits); decode {s['new_tokens']} new tokens x {s['prompts']} prompts (greedy)", "",
             "| runtime | prefill tok/s | decode tok/s | decode tok/s, 8 batched | perplexity | RSS loaded MB | "
             "RSS peak MB |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {_fmt(r['prefill_tok_s'], 1)} | {_fmt(r['decode_tok_s'], 2)} | "
                     f"{_fmt(r['decode_batch8_tok_s'], 2)} | {r['ppl']:.4f} | {r['rss_loaded_mb']:.0f} | "
                     f"{r['rss_peak_mb']:.0f} |")
    lines.append("")
    for name in ("int8", "int8_pt"):
        ratio = s[f"{name}_vs_fp32"]
        lines.append(f"{name} / fp32: prefill {ratio['prefill']:.2f}x, decode {ratio['decode']:.2f}x, "
                     f"decode 8 batched {ratio['decode_batch8']:.2f}x")
    for real, ref in PAIRS:
        e = s[f"{real}_vs_{ref}"]
        lines.append(f"{real} vs {ref}: perplexity {e['ppl_delta_pct']:+.4f} %, argmax agreement "
                     f"{100 * e['argmax_agreement']:.2f} % of {s['eval_tokens']} tokens, logits max |delta| "
                     f"{e['logits_max_abs_delta']:.4g}, greedy text equal {e['greedy_equal']}/{s['prompts']}")
    lines.append(f"kernels: {s['kernels']}; per-token: {s['kernels_per_token']}")
    if "quantized_linears_mb" in s:
        q = s["quantized_linears_mb"]
        lines.append(f"quantized linears: {q['int8']:.1f} MB int8 vs {q['fp32']:.1f} MB fp32 ({100 * q['ratio']:.1f} %)")
    return "\n".join(lines)


def plot(result: dict) -> bytes:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["variant"] in TIMED]
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, key, title in zip(axes, ("prefill_tok_s", "decode_tok_s", "decode_batch8_tok_s"),
                              ("prefill tok/s", "decode tok/s (1 request)", "decode tok/s (8 batched)"), strict=True):
        ax.bar(names, [r[key] for r in rows], color=["#888888", "#d62728", "#2ca02c", "#1f77b4"][: len(rows)])
        ax.set_title(title)
    fig.suptitle(result["summary"]["cpu"], fontsize=8)  # CPU flags next to every figure
    return png_bytes(fig)


def png_bytes(fig: Any) -> bytes:
    """A laid-out matplotlib figure as PNG bytes; the figure is closed."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embedded", type=Path, required=True, help="<build out>/embedded of an int8_sq build")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (medians are reported)")
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--logit-rows", type=int, default=64, help="positions whose logits are compared")
    p.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    return p.parse_args(argv)


def save_report(out: Path, stem: str, result: dict, text: str, png: bytes) -> None:
    """<out>/<stem>.json, .md and .png, each written whole or not at all."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", text + "\n")
    atomic_write_bytes(out / f"{stem}.png", png)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    text = table(result)
    print(text)
    save_report(args.out, "llm_runtime", result, text, plot(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
