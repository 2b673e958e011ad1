"""Serving benchmark: N concurrent clients against Triton for T seconds, and the same prompts in-process.

    .venv/bin/python benchmarks/serving.py --build-dir out/llama            # a `llm-quant build` output
    .venv/bin/python benchmarks/serving.py --tiny --duration 20             # a tiny random model, offline

Phases, all in this run on this machine, one after another (never overlapping):
  1. Triton, 1 client: per-request latency with nothing queued (the Triton overhead on a request).
  2. Triton, N clients for T seconds: requests/s, generated tokens/s, p50/p99 latency, failed requests.
  3. In-process: the same quantized model (``llm_quant.runtime.load_quantized``) and the same generation code
     (``triton_backend.generation``) the served model runs, on the same prompts, sequentially.
Overhead = Triton ÷ in-process, for latency (phase 1 vs 3) and tokens/s (phase 2 vs 3). Prints a table, writes
``serving.json`` and ``serving.png`` to ``--out``.
``--compare`` adds, in the same run, N-client phases on Triton serving the fake-quant runtime (``kernels: fake``)
and the int8 runtime with ``batch_requests`` flipped, each against its own server.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llm_runtime import cpu_flags  # the sibling benchmark (this script's folder is on sys.path)

from llm_quant.runtime import load_quantized
from llm_quant.tiny import tiny_build
from quant_common.atomic import atomic_write_json, staged_file
from quant_common.errors import QuantError
from triton_backend.client import LLMClient
from triton_backend.generation import Sampling, fold_quantized_weights, generate_ids
from triton_backend.options import TritonOptions
from triton_backend.repository import package_for_build
from triton_backend.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = [
    "The capital of France is",
    "Quantization reduces the size of a neural network by",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "To install a Python package, run",
    "GPUs are fast at matrix multiplication because",
    "A haiku about the sea:",
]


@dataclass
class Phase:
    name: str
    clients: int
    seconds: float
    requests: int = 0
    failed: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str | None = None
    texts: dict[str, str] = field(default_factory=dict)  # first answer per prompt (greedy: all are equal)

    def summary(self) -> dict[str, float | int | str | None]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] * 1000 if lat else float("nan")

        return {"phase": self.name, "clients": self.clients, "seconds": round(self.seconds, 2),
                "requests": self.requests, "failed": self.failed,
                "req_per_s": round(self.requests / self.seconds, 3) if self.seconds else 0.0,
                "tokens_per_s": round(self.tokens / self.seconds, 2) if self.seconds else 0.0,
                "p50_ms": round(pct(0.5), 1), "p99_ms": round(pct(0.99), 1),
                "mean_ms": round(statistics.fmean(lat) * 1000, 1) if lat else float("nan"),
                "first_error": self.first_error}


def run_clients(url: str, protocol: str, clients: int, seconds: float, max_tokens: int, stream: bool,
                min_requests: int = 0) -> Phase:
    phase = Phase(f"triton x{clients}", clients, seconds)
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker(index: int) -> None:
        client = LLMClient(url, protocol=protocol)  # type: ignore[arg-type]
        turn = index
        while time.perf_counter() < stop_at or phase.requests < min_requests:
            prompt = PROMPTS[turn % len(PROMPTS)]
            turn += 1
            try:
                result = (client.generate_streamed(prompt, max_tokens=max_tokens) if stream
                          else client.generate(prompt, max_tokens=max_tokens))
            except QuantError as exc:
                with lock:
                    phase.requests += 1
                    phase.failed += 1
                    phase.first_error = phase.first_error or str(exc)
                continue
            with lock:
                phase.requests += 1
                phase.tokens += result.tokens or 0
                phase.latencies.append(result.latency_s)
                phase.texts.setdefault(prompt, result.text)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - start  # includes the requests still running at the deadline
    return phase


def serve(args: argparse.Namespace, build: Path, work: Path, *, batch_requests: bool | None,
          kernels: str | None = None, with_single: bool = False) -> tuple[Phase | None, Phase]:
    """One Triton server on ``build``'s repository: the 1-client phase (optional), then N clients."""
    options = None if batch_requests is None else {"batch_requests": batch_requests}
    repo = package_for_build(build, options=options, out=work / "triton_repo").path
    if kernels is not None:  # the python-backend model reads "kernels" (int8 or fake) from its parameters
        config = repo / "tensorrt_llm" / "config.pbtxt"
        config.write_text(config.read_text() + f'\nparameters {{ key: "kernels" value {{ string_value: "{kernels}" }} }}\n')
    server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          log_file=work / "tritonserver.log")
    print(f"starting Triton on {repo} (log {server.log_file})", file=sys.stderr)
    single = None
    with server:
        url = server.http_url if args.protocol == "http" else server.grpc_url
        run_clients(url, args.protocol, 1, 0.1, 4, args.stream)  # warm-up
        if with_single:
            single = run_clients(url, args.protocol, 1, args.single_duration, args.max_tokens, args.stream,
                                 min_requests=args.greedy_prompts)
            single.name = "triton x1"
        loaded = run_clients(url, args.protocol, args.clients, args.duration, args.max_tokens, args.stream)
    return single, loaded


def run_in_process(embedded: Path, seconds: float, max_tokens: int, min_requests: int = 0) -> Phase:
    model, tokenizer = load_quantized(embedded)
    fold_quantized_weights(model)  # as the served model does
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    phase = Phase("in-process", 1, seconds)
    encoded = [tokenizer.encode(p) for p in PROMPTS]
    generate_ids(model, encoded[0], Sampling(max_new_tokens=2, end_id=tokenizer.eos_token_id, pad_id=pad))  # warm-up
    start = time.perf_counter()
    turn = 0
    while time.perf_counter() - start < seconds or phase.requests < min_requests:
        began = time.perf_counter()
        ids = generate_ids(model, encoded[turn % len(encoded)],
                           Sampling(max_new_tokens=max_tokens, end_id=tokenizer.eos_token_id, pad_id=pad))
        text = tokenizer.decode(ids, skip_special_tokens=True)  # the server detokenizes too
        phase.texts.setdefault(PROMPTS[turn % len(PROMPTS)], text)
        phase.latencies.append(time.perf_counter() - began)
        phase.requests += 1
        phase.tokens += len(ids)
        turn += 1
    phase.seconds = time.perf_counter() - start
    return phase


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["phase"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [r["tokens_per_s"] for r in rows], color=["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#937860"][: len(rows)])
    left.set_title("generated tokens/s")
    width = 0.38
    xs = range(len(rows))
    right.bar([x - width / 2 for x in xs], [r["p50_ms"] for r in rows], width, label="p50")
    right.bar([x + width / 2 for x in xs], [r["p99_ms"] for r in rows], width, label="p99")
    right.set_xticks(list(xs), names)
    right.set_title("request latency (ms)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--build-dir", type=Path, help="output of llm-quant build (holds embedded/)")
    source.add_argument("--tiny", action="store_true", help="build a tiny random quantized model first")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the N-client phase")
    parser.add_argument("--single-duration", type=float, default=20.0, help="seconds of the 1-client and "
                        "in-process phases")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--stream", action="store_true", help="stream responses (decoupled model)")
    parser.add_argument("--greedy-prompts", type=int, default=5, help="at least this many prompts answered by "
                        "Triton (1 client) and in-process, compared for equal greedy text")
    parser.add_argument("--batch-requests", choices=("true", "false"), default=None,
                        help="override triton.batch_requests (batch concurrent greedy requests)")
    parser.add_argument("--compare", action="store_true", help="also serve the fake-quant runtime and the int8 "
                        "runtime with batch_requests flipped (N-client phases, same run)")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "benchmarks" / "serving")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tq-serving-"))
    if args.tiny:
        build = tiny_build(work / "tiny")
    else:
        build = args.build_dir
    batch = args.batch_requests == "true" if args.batch_requests is not None else None
    single, loaded = serve(args, build, work / "int8", batch_requests=batch, with_single=True)
    extra = []
    if args.compare:
        default_batch = TritonOptions().batch_requests if batch is None else batch
        _, flipped = serve(args, build, work / "int8_flip", batch_requests=not default_batch)
        flipped.name = f"batch {'on' if not default_batch else 'off'}"
        _, fake = serve(args, build, work / "fake", batch_requests=batch, kernels="fake")
        fake.name = "fake x" + str(args.clients)
        extra = [flipped, fake]
    local = run_in_process(build / "embedded", args.single_duration, args.max_tokens,
                           min_requests=args.greedy_prompts)
    assert single is not None  # serve(..., with_single=True) runs the one-client phase
    compared = sorted(set(single.texts) & set(local.texts))
    same = [p for p in compared if single.texts[p] == local.texts[p]]

    rows = [single.summary(), loaded.summary(), local.summary()]
    overhead = {
        "latency_p50_ratio_1_client": round(rows[0]["p50_ms"] / rows[2]["p50_ms"], 3),  # type: ignore[operator]
        "tokens_per_s_ratio_n_clients": round(rows[1]["tokens_per_s"] / rows[2]["tokens_per_s"], 3),  # type: ignore[operator]
        "latency_p50_added_ms_1_client": round(rows[0]["p50_ms"] - rows[2]["p50_ms"], 1),  # type: ignore[operator]
    }
    header = f"{'phase':<12} {'clients':>7} {'s':>6} {'reqs':>5} {'fail':>4} {'req/s':>7} {'tok/s':>8} " \
             f"{'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['phase']:<12} {r['clients']:>7} {r['seconds']:>6} {r['requests']:>5} {r['failed']:>4} "
              f"{r['req_per_s']:>7} {r['tokens_per_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    print(f"overhead: Triton 1-client p50 latency = {overhead['latency_p50_ratio_1_client']}x in-process "
          f"(+{overhead['latency_p50_added_ms_1_client']} ms); {args.clients}-client tokens/s = "
          f"{overhead['tokens_per_s_ratio_n_clients']}x in-process")
    for phase in extra:
        row = phase.summary()
        print(f"{row['phase']:<12} {row['clients']:>7} {row['seconds']:>6} {row['requests']:>5} {row['failed']:>4} "
              f"{row['req_per_s']:>7} {row['tokens_per_s']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8}")
        print(f"  int8 triton x{args.clients} / {row['phase']}: tokens/s "
              f"{float(rows[1]['tokens_per_s']) / max(float(row['tokens_per_s']), 1e-9):.2f}x")  # type: ignore[arg-type]
    print(f"CPU: {cpu_flags()}")
    print(f"greedy equality: {len(same)}/{len(compared)} prompts give identical text through Triton and "
          "in-process")
    for prompt in compared:
        if prompt not in same:
            print(f"  differs: {prompt!r}: triton {single.texts[prompt]!r} vs in-process {local.texts[prompt]!r}")
    if loaded.first_error:
        print(f"first error: {loaded.first_error}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "serving.json", {
        "model": str(build), "protocol": args.protocol, "stream": args.stream, "max_tokens": args.max_tokens,
        "rows": rows, "compare": [p.summary() for p in extra], "cpu": cpu_flags(), "overhead": overhead, "greedy_equal": len(same), "greedy_compared": len(compared),
        "texts": {"triton": single.texts, "in_process": local.texts}, "settings": {k: str(v) for k, v in asdict(loaded).items()
                                                          if k in ("clients", "seconds")}})
    with staged_file(args.out / "serving.png") as tmp:
        plot(rows + [p.summary() for p in extra], tmp.with_suffix(".png"))
        tmp.with_suffix(".png").replace(tmp)
    print(f"wrote {args.out / 'serving.json'} and {args.out / 'serving.png'}")
    return 1 if loaded.failed or any(p.failed for p in extra) or len(same) != len(compared) else 0


if __name__ == "__main__":
    raise SystemExit(main())
