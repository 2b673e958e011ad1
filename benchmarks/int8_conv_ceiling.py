"""How much faster INT8 convolutions can be on this CPU: YOLOv8n's convolution shapes alone, FP32 vs INT8.

Each row is a chain of four Conv+SiLU blocks of one shape from YOLOv8n (3x3 at 80x80/64 channels, 160x160/32,
40x40/128, 20x20/256; 1x1 at 80x80/128), nothing else in the graph: ONNX Runtime FP32 (the reference of the
acceptance ratio), OpenVINO FP32 (f32 hint) and OpenVINO on the same chain in our OpenVINO Q/DQ layout
(``vision.artifacts.qdq_ov``: uint8 activations, per-channel INT8 weights, SiLU fused into the INT8 kernel). The
INT8 column over the ONNX Runtime column is the most a whole INT8 network can gain over ONNX Runtime FP32 on this
CPU when it is made of such convolutions: if it is below 4x here, no Q/DQ placement makes the detector 4x faster.

    .venv/bin/python benchmarks/int8_conv_ceiling.py [--threads 2] [--repeats 40]

Median of interleaved repetitions (10th percentile in brackets: the least disturbed runs on a busy machine); the
CPU's model name and SIMD flags are printed with the table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vision.artifacts.qdq_ov import write_openvino_qdq  # noqa: E402
from vision.backends.onnxrt import create_session  # noqa: E402
from vision.backends.openvino import compile_model  # noqa: E402
from vision.evaluation.bench import cpu_flags, cpu_name  # noqa: E402

# (channels, kernel, height=width): the convolution shapes that make up most of YOLOv8n's multiply-adds at 640x640
SHAPES = ((64, 3, 80), (32, 3, 160), (128, 3, 40), (256, 3, 20), (128, 1, 80))
BLOCKS = 4


def conv_chain(channels: int, kernel: int, size: int, seed: int = 0) -> onnx.ModelProto:
    """``BLOCKS`` x (Conv same-padding + SiLU as Sigmoid/Mul, like an Ultralytics export), random He-scaled weights."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "images"
    for i in range(BLOCKS):
        w = rng.normal(size=(channels, channels, kernel, kernel)) / np.sqrt(channels * kernel * kernel)
        inits += [numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[kernel // 2] * 4),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sigmoid{i}"),
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"y{i}"], name=f"silu{i}")]
        x = f"y{i}"
    shape = [1, channels, size, size]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def amax_scales(model: onnx.ModelProto, feed: np.ndarray) -> dict[str, float]:
    """amax/127 of every Conv input (what a MinMax calibration cache holds), from one ONNX Runtime pass."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [n.input[0] for n in model.graph.node if n.op_type == "Conv"]
    del probe.graph.output[:]
    probe.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names])
    values = create_session(probe.SerializeToString(), 1).run(names, {"images": feed})
    return {n: max(float(np.abs(v).max()), 1e-6) / 127.0 for n, v in zip(names, values, strict=True)}


def _runs(fp32: Path, int8: Path, feed: np.ndarray, threads: int) -> list[Callable[[], object]]:
    """ONNX Runtime FP32, OpenVINO FP32 (f32 hint), OpenVINO INT8: one inference each."""
    ort = create_session(fp32, threads)
    ov32 = compile_model(fp32, "f32", threads).create_infer_request()
    ov8 = compile_model(int8, "f32", threads).create_infer_request()
    return [lambda: ort.run(None, {"images": feed}), lambda: ov32.infer([feed]), lambda: ov8.infer([feed])]


def _interleaved(runs: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Milliseconds per run, repetitions alternating between the runs so a busy machine slows all alike."""
    for run in runs:
        run()
        run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for index, run in enumerate(runs):
            start = time.perf_counter()
            run()
            times[index].append((time.perf_counter() - start) * 1e3)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args(argv)
    print(f"{BLOCKS} x (Conv + SiLU), batch 1, threads {args.threads}, median [p10] of {args.repeats} interleaved; "
          f"{cpu_name()}, flags: {' '.join(cpu_flags()) or 'unknown'}")
    print(f"{'shape':<22} | {'MMAC':>5} | {'ORT FP32 ms':>15} | {'OV f32 ms':>15} | {'OV INT8 ms':>15} | "
          f"{'ORT FP32/INT8':>13} | {'OV f32/INT8':>11}")
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="vq-ceiling-") as tmp:
        for channels, kernel, size in SHAPES:
            model = conv_chain(channels, kernel, size)
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, str(fp32))
            feed = rng.random((1, channels, size, size), dtype=np.float32)
            write_openvino_qdq(model, amax_scales(model, feed), int8, weight_bits="8")
            times = _interleaved(_runs(fp32, int8, feed, args.threads), args.repeats)
            med = [statistics.median(t) for t in times]
            p10 = [float(np.percentile(t, 10)) for t in times]
            macs = BLOCKS * channels * channels * kernel * kernel * size * size
            cells = " | ".join(f"{m:6.2f} [{p:6.2f}]" for m, p in zip(med, p10, strict=True))
            print(f"{f'{channels}->{channels} {kernel}x{kernel} @{size}x{size}':<22} | {macs / 1e6:>5.0f} | {cells} | "
                  f"{med[0] / med[2]:>5.2f}x [{p10[0] / p10[2]:.2f}] | {med[1] / med[2]:>5.2f}x [{p10[1] / p10[2]:.2f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
