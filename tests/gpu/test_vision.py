"""The vision pipeline on a GPU machine: build, eval and bench of the bundled detector (ONNX Runtime on the host;
TensorRT tests skip without TensorRT, as everywhere)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _vision(*args, timeout=900):
    done = subprocess.run([sys.executable, "-m", "vision.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(done.stdout) if "--json" in args else done.stdout


@pytest.fixture(scope="module")
def vision_build(tmp_path_factory):
    pytest.importorskip("pycocotools")
    out = tmp_path_factory.mktemp("vision") / "yolov8"
    _vision("build", "--out", out, "--max-calib-images", 32, "--json")
    return out


def test_build_eval_bench(vision_build, tmp_path):
    from vision.data.synthetic import generate_dataset

    annotations = generate_dataset(tmp_path / "val", 24, seed=3)
    images = annotations.parent.parent / "images" / "val"
    fp32 = _vision("eval", "vision/assets/yolov8n_shapes.onnx", "--data", images, "--annotations", annotations,
                   "--backend", "onnxruntime", "--json")
    int8 = _vision("eval", vision_build / "model.int8.ort.onnx", "--data", images, "--annotations", annotations,
                   "--backend", "onnxruntime", "--json")
    assert fp32["map50_95"] > 0.5 and int8["map50_95"] > fp32["map50_95"] - 0.1, (fp32, int8)
    bench = _vision("bench", vision_build / "model.int8.ort.onnx", "--iterations", 10, "--warmup", 2, "--json")
    assert bench["latency_ms"]["p50"] > 0
