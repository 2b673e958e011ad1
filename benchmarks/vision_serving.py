"""Vision serving benchmark: images/s and p50/p99 latency through Triton vs the same runtime in-process.

    .venv/bin/python benchmarks/vision_serving.py --build-dir build/ --images val/ --duration 60

Four phases, one after another in this run on this machine: {Triton, in-process} x {1, N clients}, each for
``--duration`` seconds, every client sending encoded images (JPEG/PNG bytes) round-robin. Triton serves the
repository ``vision-quant package`` writes (python-backend preprocess -> detector with dynamic batching ->
postprocess, over gRPC); in-process runs the identical steps (``decode_image`` -> ``letterbox`` -> the same
``Runner`` -> ``postprocess``) in N threads sharing one runner. Ratio = Triton images/s / in-process images/s.
Prints a table with the CPU's SIMD flags; writes ``vision_serving.json`` and ``vision_serving.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from quant_common.atomic import atomic_write_json, staged_file  # noqa: E402
from triton_backend.server import TritonServer, free_port  # noqa: E402
from vision.backends.base import Runner  # noqa: E402
from vision.backends.select import load_runner  # noqa: E402
from vision.data.images import decode_image, letterbox, list_images, to_input_tensor  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402
from vision.evaluation.yolo import detection_output, postprocess  # noqa: E402
from vision.serving.client import DetectClient  # noqa: E402
from vision.serving.repository import ServingOptions, package  # noqa: E402


@dataclass
class Phase:
    path: str
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    first_error: str | None = None

    def row(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        return {"path": self.path, "clients": self.clients, "images": len(self.latencies), "failed": self.failed,
                "images_per_s": round(len(self.latencies) / self.seconds, 2) if self.seconds else 0.0,
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "first_error": self.first_error}


def run_phase(phase: Phase, payloads: list[bytes], duration: float, make_worker: Any) -> Phase:
    """``phase.clients`` threads, each calling its own ``detect(bytes)`` until ``duration`` seconds pass."""
    lock = threading.Lock()
    deadline = time.perf_counter() + duration

    def loop(index: int) -> None:
        detect = make_worker()
        k = index
        while time.perf_counter() < deadline:
            data = payloads[k % len(payloads)]
            k += 1
            start = time.perf_counter()
            try:
                detect(data)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the benchmark goes on
                with lock:
                    phase.failed += 1
                    phase.first_error = phase.first_error or f"{exc.__class__.__name__}: {exc}"
                continue
            with lock:
                phase.latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(phase.clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - began
    return phase


def in_process_detector(runner: Runner, hw: tuple[int, int], max_pixels: int) -> Any:
    """The served pipeline's steps, in this process."""
    name = runner.input_specs()[0].name

    def detect(data: bytes) -> Any:
        boxed, info = letterbox(decode_image(data, max_pixels), hw)
        output = detection_output(runner.infer({name: to_input_tensor([boxed])}))
        return postprocess(output, [info], conf=0.25, iou=0.7, max_det=300)[0]

    return detect


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"CPU: {cpu_name()}  SIMD flags: {' '.join(cpu_flags()) or 'unknown'}")
    print(f"{'path':<11}{'clients':>8}{'images':>8}{'failed':>8}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{r['path']:<11}{r['clients']:>8}{r['images']:>8}{r['failed']:>8}{r['images_per_s']:>10.2f}"
              f"{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}")


def plot(rows: list[dict[str, Any]], ratios: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = sorted({r["clients"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.38
    for offset, name in ((-width / 2, "triton"), (width / 2, "in-process")):
        sel = [next(r for r in rows if r["path"] == name and r["clients"] == c) for c in clients]
        xs = np.arange(len(clients)) + offset
        ax1.bar(xs, [r["images_per_s"] for r in sel], width, label=name)
        ax2.bar(xs, [r["p99_ms"] for r in sel], width, label=name)
    for ax, title in ((ax1, "images/s"), (ax2, "p99 latency (ms)")):
        ax.set_xticks(range(len(clients)), [f"{c} client{'s' if c > 1 else ''}" for c in clients])
        ax.set_title(title)
        ax.legend()
    fig.suptitle("Triton / in-process images/s: " + ", ".join(f"{k} clients {v:.2f}x" for k, v in ratios.items())
                 + f"\n{cpu_name()} [{' '.join(cpu_flags())}]", fontsize=9)
    fig.tight_layout()
    with staged_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build-dir", type=Path, required=True, help="a `vision-quant build` output")
    parser.add_argument("--images", type=Path, required=True, help="images to send (directory or list file)")
    parser.add_argument("--max-images", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--instances", type=int, default=2, help="instances of each served model (one per core)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads per detector instance, and per "
                        "in-process client (0: all cores)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    args = parser.parse_args(argv)

    payloads = [p.read_bytes() for p in list_images(args.images)[:args.max_images]]
    options = ServingOptions.model_validate({"instances": args.instances, "threads": args.threads or None})
    rows = []
    with tempfile.TemporaryDirectory(prefix="vision-serving-") as tmp:
        repo = package(args.build_dir, Path(tmp) / "repo", options)
        server = TritonServer(repo.path, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
        with server:
            for clients in (1, args.clients):
                phase = run_phase(Phase("triton", clients), payloads, args.duration,
                                  lambda: DetectClient(server.grpc_url, protocol="grpc").detect)
                rows.append(phase.row())
        runner = load_runner(repo.model_file, threads=args.threads or None)
        with runner:
            shape = runner.input_specs()[0].shape
            hw = (int(shape[2]), int(shape[3]))  # type: ignore[arg-type]
            detect = in_process_detector(runner, hw, options.max_image_pixels)
            for clients in (1, args.clients):
                rows.append(run_phase(Phase("in-process", clients), payloads, args.duration, lambda: detect).row())
    print_table(rows)
    ratios = {}
    for clients in (1, args.clients):
        served, local = (next(r for r in rows if r["path"] == p and r["clients"] == clients)
                         for p in ("triton", "in-process"))
        ratios[str(clients)] = served["images_per_s"] / local["images_per_s"] if local["images_per_s"] else 0.0
        print(f"Triton / in-process images/s at {clients} client(s): {ratios[str(clients)]:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "vision_serving.json", {"rows": rows, "ratios": ratios, "cpu": cpu_name(),
                                                         "cpu_flags": cpu_flags(), "duration_s": args.duration,
                                                         "build": str(args.build_dir), "images": len(payloads)})
    plot(rows, ratios, args.out / "vision_serving.png")
    failed = sum(r["failed"] for r in rows)
    print(f"failed requests: {failed}; wrote {args.out / 'vision_serving.json'} and {args.out / 'vision_serving.png'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
