"""TensorRT backend: version logic, hardened cache handling and trtexec lines run everywhere; engine builds need
TensorRT and a GPU and skip with the reason otherwise."""

from __future__ import annotations

import time

import numpy as np
import pytest

from quant_common.errors import MissingDependencyError, QuantError, is_importable
from vision.artifacts.cache import load_for_tensorrt
from vision.artifacts.trtexec import trtexec_lines
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


def test_cache_is_validated_before_tensorrt_reads_it(tmp_path):
    """Regression (issue 21 item 5): the header guard lived inside read_calibration_cache, where TensorRT's binding
    catches the exception, prints it and treats the cache as absent (python/src/infer/pyInt8.cpp v10.13.3
    L102-110): TensorRT then calibrated and wrote over the published cache."""
    cache = tmp_path / "calibration.cache"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: 3c010204\n")
    with pytest.raises(QuantError, match="cache retarget .* --trt-version 10.13.0"):
        load_for_tensorrt(cache, "TRT-101300-EntropyCalibration2")
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: zz\n")
    with pytest.raises(QuantError, match="line 2"):
        load_for_tensorrt(cache, "TRT-8601-EntropyCalibration2")
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\nimages: 3c010204\n")
    data = load_for_tensorrt(cache, "TRT-8601-EntropyCalibration2")
    feed = CalibrationFeed([], 1, data)
    # what TensorRT calls: nothing raises into it, nothing is written to disk
    assert feed.read_cache() == data
    feed.write_cache(b"TRT-8601-EntropyCalibration2\nimages: 3c010205\n")
    assert cache.read_bytes() == data and [p.name for p in tmp_path.iterdir()] == [cache.name]
    assert feed.check("8.6.1")["tensorrt_wrote_cache"] == "different (not saved)"
    # TensorRT asking for data although it was given a cache means it refused the cache: the build fails by name
    assert feed.next_pointers(["images"]) == []
    with pytest.raises(QuantError, match="did not use the calibration cache"):
        feed.check("8.6.1")


def test_calibrator_errors_are_kept_for_after_the_build():
    """An exception in get_batch would be swallowed by TensorRT (pyInt8.cpp): the feed records it instead."""
    feed = CalibrationFeed([{"other": np.zeros((1, 3, 8, 8), np.float32)}], 1, None)
    assert feed.next_pointers(["images"]) == []  # no exception escapes into TensorRT
    with pytest.raises(QuantError, match="calibration failed inside TensorRT's calibrator"):
        feed.check("10.13.0")


def test_trtexec_lines_cover_every_precision(tmp_path):
    import onnx

    from tests.vision.artifacts.test_qdq import tiny_conv_model

    path = tiny_conv_model(tmp_path / "tiny.onnx")
    info = inspect_model(onnx.load(str(path)), path)
    lines = trtexec_lines(info, (32, 32), 8, onnx_name="model.onnx", cache_name="calibration.trtexec.cache",
                          qdq_name="model.int8.onnx", trt_version="10.13.0").lines
    assert set(lines) == {"fp32", "fp16", "int8_cache", "int8_qdq"}
    assert "--int8 --fp16 --calib=calibration.trtexec.cache" in lines["int8_cache"].command
    assert "--onnx=model.int8.onnx --stronglyTyped" in lines["int8_qdq"].command
    assert "--minShapes=images:1x3x32x32" in lines["fp32"].command
    assert "--maxShapes=images:8x3x32x32" in lines["fp16"].command


def test_runner_reports_the_span_it_times_itself():
    """TrtRunner times only enqueue + synchronize (issue 21 item 6): the base contract takes a runner's own span."""
    from vision.backends.base import Runner, TensorSpec

    class Sleeper(Runner):
        def activate_impl(self):
            pass

        def input_specs_impl(self):
            return [TensorSpec("x", (1,), np.dtype(np.float32))]

        def output_specs_impl(self):
            return []

        def infer_impl(self, feeds):
            time.sleep(0.05)  # stands for host copies and allocation, outside the timed span
            self.timed_seconds = 0.001
            return {}

    with Sleeper() as runner:
        runner.infer({"x": np.zeros(1, np.float32)})
    assert runner.inference_time == 0.001


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


@needs_trt
def test_runner_uses_its_own_stream_and_times_only_the_engine(tmp_path):
    """Issue 21 item 6: not the legacy default stream; copies and allocation outside inference_time."""
    import torch

    from tests.vision.artifacts.test_qdq import tiny_conv_model
    from vision.backends.trt import EngineSpec, TrtRunner, build_engine

    path = tiny_conv_model(tmp_path / "tiny.onnx")
    spec = EngineSpec(path, tmp_path / "model.fp32.engine", "fp32", "images", (32, 32), dynamic_batch=True)
    build_engine(spec)
    feeds = {"images": np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)}
    with TrtRunner(spec.engine_path) as runner:
        assert runner._stream is not None and runner._stream.cuda_stream != torch.cuda.default_stream().cuda_stream
        start = time.perf_counter()
        runner.infer(feeds)
        whole = time.perf_counter() - start
        assert runner.inference_time is not None and 0 < runner.inference_time < whole
