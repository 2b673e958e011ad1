"""Latency and throughput of one artifact behind any ``Runner``: warm-up, then timed inferences on random input.

Timing uses the runner's own ``inference_time`` (host clock around a synchronous ``infer``). Inputs are random
values in [0, 1], not zeros (zeros can run faster than real data), drawn once from a seed.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from quant_common.errors import QuantError
from vision.backends.base import Runner


@dataclass
class BenchResult:
    backend: str
    device: str
    cpu: str
    threads: int | str
    batch: int
    input_shape: list[int]
    warmup: int
    iterations: int
    latency_ms: dict[str, float]  # mean, p50, p90, p99, min, max of one batch
    throughput_ips: float  # images per second at this batch size (batch / mean latency)
    artifact: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_name() -> str:
    """The processor's model name (for reports: CPU latency means little without it)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


# The instruction-set extensions INT8 and FP32 speed depend on (VNNI: exact, fast u8s8; AMX; AVX-512 BF16).
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_flags(wanted: tuple[str, ...] = SIMD_FLAGS) -> list[str]:
    """Which of ``wanted`` this CPU has (from /proc/cpuinfo; empty where it cannot be read): print them with any
    figure, the CPU differs from machine to machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in wanted if flag in present]
    except OSError:
        pass
    return []


def bench_input(runner: Runner, batch: int, imgsz: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random feed of ``batch`` images for the runner's single image input."""
    specs = runner.input_specs()
    if len(specs) != 1 or len(specs[0].shape) != 4:
        shapes = [(s.name, s.shape) for s in specs]
        raise QuantError(f"the model's inputs {shapes} are not one NCHW image input",
                         "bench runs single-image-input models (YOLOv8 exports)")
    spec = specs[0]
    n, c, h, w = spec.shape
    if isinstance(n, int) and n > 0 and n != batch:
        raise QuantError(f"the model has a fixed batch of {n}, --batch {batch} was asked",
                         f"pass --batch {n}, or export the model with a dynamic batch dimension")
    shape = (batch, c if isinstance(c, int) and c > 0 else 3, h if isinstance(h, int) and h > 0 else imgsz,
             w if isinstance(w, int) and w > 0 else imgsz)
    data = np.random.default_rng(seed).random(shape, dtype=np.float32).astype(spec.dtype, copy=False)
    return {spec.name: data}


def benchmark(runner: Runner, *, batch: int = 1, warmup: int = 10, iterations: int = 50, imgsz: int = 640,
              threads: int | None = None, seed: int = 0) -> BenchResult:
    """Warm up, then time ``iterations`` inferences of one batch; percentiles of the per-call latency."""
    if batch < 1 or iterations < 1 or warmup < 0:
        raise QuantError(f"batch {batch}, iterations {iterations} and warmup {warmup} must be positive",
                         "pass --batch >= 1, --iterations >= 1, --warmup >= 0")
    runner.activate()
    feeds = bench_input(runner, batch, imgsz, seed)
    for _ in range(warmup):
        runner.infer(feeds)
    times = np.empty(iterations)
    for i in range(iterations):
        runner.infer(feeds)
        times[i] = runner.inference_time or 0.0
    ms = times * 1e3
    latency = {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
               "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max())}
    return BenchResult(
        backend=runner.backend, device=runner.device, cpu=cpu_name(), threads=threads or "auto", batch=batch,
        input_shape=list(next(iter(feeds.values())).shape), warmup=warmup, iterations=iterations,
        latency_ms={k: round(v, 3) for k, v in latency.items()},
        throughput_ips=round(batch / (latency["mean"] / 1e3), 2) if latency["mean"] > 0 else 0.0)


def interleaved_latency(runners: Sequence[Runner], *, rounds: int = 10, warmup: int = 2, imgsz: int = 640,
                        seed: int = 0) -> list[float]:
    """Median ms of one batch-1 inference for each runner, timed round-robin (one inference of each per round): a
    machine whose load drifts slows every runner alike, so the ratios between them hold. Activates each runner;
    the caller deactivates them."""
    if rounds < 1 or warmup < 0:
        raise QuantError(f"rounds {rounds} and warmup {warmup} must be positive", "pass rounds >= 1, warmup >= 0")
    feeds = []
    for runner in runners:
        runner.activate()
        feeds.append(bench_input(runner, 1, imgsz, seed))
    for _ in range(warmup):
        for runner, feed in zip(runners, feeds, strict=True):
            runner.infer(feed)
    times = np.empty((rounds, len(runners)))
    for r in range(rounds):
        for i, (runner, feed) in enumerate(zip(runners, feeds, strict=True)):
            runner.infer(feed)
            times[r, i] = runner.inference_time or 0.0
    return [float(v) for v in np.median(times, axis=0) * 1e3]
