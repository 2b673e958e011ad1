"""TensorRT backend: version logic, hardened cache handling and trtexec lines run everywhere; engine builds need
TensorRT and a GPU and skip with the reason otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from quant_common.errors import MissingDependencyError, QuantError, is_importable
from vision.artifacts.trtexec import trtexec_commands
from vision.backends.select import resolve_backend
from vision.backends.trt import CalibrationFeed, choose_int8_mode, version_tuple
from vision.model import inspect_model

HAS_TRT = is_importable("tensorrt")
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed here (it cannot be installed on this "
                                                   "machine: NVIDIA's wheels come from NVIDIA's own index)")


def test_int8_mode_follows_the_tensorrt_version():
    assert version_tuple("10.13.0.35") == (10, 13, 0) and version_tuple("8.6") == (8, 6, 0)
    assert choose_int8_mode("8.6.1") == "implicit" and choose_int8_mode("10.13.0") == "implicit"
    assert choose_int8_mode("11.0.0") == "explicit" and choose_int8_mode("10.13.0", "explicit") == "explicit"
    with pytest.raises(QuantError, match="removed implicit INT8"):
        choose_int8_mode("11.0.0", "implicit")
    with pytest.raises(QuantError, match="strongly typed"):
        choose_int8_mode("8.6.1", "explicit")


def test_calibration_feed_refuses_a_cache_with_another_header(tmp_path):
    cache = tmp_path / "calibration.cache"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: 3c010204\n")
    feed = CalibrationFeed([], 1, cache, "TRT-101300-EntropyCalibration2")
    with pytest.raises(QuantError, match="silently ignore"):
        feed.read_cache()
    same = CalibrationFeed([], 1, cache, "TRT-8601-EntropyCalibration2")
    assert same.read_cache() == cache.read_bytes()
    assert CalibrationFeed([], 1, tmp_path / "absent.cache", "x").read_cache() is None
    same.write_cache(b"TRT-8601-EntropyCalibration2\nimages: 3c010205\n")
    assert cache.read_bytes().endswith(b"3c010205\n") and [p.name for p in tmp_path.iterdir()] == [cache.name]


def test_trtexec_lines_cover_every_precision(tmp_path):
    import onnx

    from tests.vision.artifacts.test_qdq import tiny_conv_model

    path = tiny_conv_model(tmp_path / "tiny.onnx")
    info = inspect_model(onnx.load(str(path)), path)
    lines = trtexec_commands(info, (32, 32), 8, "calibration.cache", "model.int8.onnx", trt_version="10.13.0")
    assert set(lines) == {"fp32", "fp16", "int8_cache", "int8_qdq"}
    assert "--int8 --fp16 --calib=calibration.cache" in lines["int8_cache"]
    assert "--onnx=model.int8.onnx --stronglyTyped" in lines["int8_qdq"]
    assert "--minShapes=images:1x3x32x32" in lines["fp32"] and "--maxShapes=images:8x3x32x32" in lines["fp16"]


def test_backend_auto_and_missing_tensorrt():
    assert resolve_backend("auto") == ("tensorrt" if HAS_TRT else "onnxruntime")
    if not HAS_TRT:
        with pytest.raises(MissingDependencyError, match="tensorrt"):
            resolve_backend("tensorrt")


@needs_trt
def test_engines_build_and_run(tmp_path):
    from tests.vision.artifacts.test_qdq import tiny_conv_model
    from vision.backends.onnxrt import OnnxrtRunner
    from vision.backends.trt import EngineSpec, TrtRunner, build_engine

    path = tiny_conv_model(tmp_path / "tiny.onnx")
    feeds = {"images": np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)}
    with OnnxrtRunner(path) as ort_runner:
        reference = ort_runner.infer(feeds)["scores"]
    for precision in ("fp32", "fp16"):
        spec = EngineSpec(path, tmp_path / f"model.{precision}.engine", precision, "images", (32, 32),
                          dynamic_batch=True, timing_cache_path=tmp_path / "model.timing.cache")
        build_engine(spec)
        with TrtRunner(spec.engine_path) as runner:
            got = runner.infer(feeds)["scores"]
        assert np.abs(got - reference).max() < (1e-3 if precision == "fp32" else 2e-2)
    assert (tmp_path / "model.timing.cache").stat().st_size > 0
