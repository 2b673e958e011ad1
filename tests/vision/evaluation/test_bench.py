"""`vision.evaluation.bench`: warm-up, percentiles and throughput over a real ONNX Runtime session (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant_common.errors import QuantError
from tests.vision.eval_helpers import classifier_onnx
from vision.backends.select import load_runner
from vision.evaluation.bench import benchmark


@pytest.mark.parametrize(("backend", "reported"), [("onnxruntime", "onnxruntime"), ("openvino", "openvino[f32]")])
def test_benchmark_reports_ordered_percentiles(tiny_detector: Path, backend: str, reported: str) -> None:
    pytest.importorskip(backend)
    with load_runner(tiny_detector, backend, threads=1) as runner:
        result = benchmark(runner, batch=1, warmup=2, iterations=7, threads=1)
    lat = result.latency_ms
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] and lat["min"] > 0
    assert result.throughput_ips == pytest.approx(1000 / lat["mean"], rel=1e-2)
    assert result.input_shape == [1, 3, 64, 64] and result.threads == 1
    assert result.backend == reported and result.device == "cpu" and result.cpu
    assert result.iterations == 7 and result.warmup == 2


def test_dynamic_batch_models_take_any_batch(tiny_detector_dynamic: Path) -> None:
    with load_runner(tiny_detector_dynamic) as runner:
        result = benchmark(runner, batch=3, warmup=0, iterations=2)
    assert result.input_shape == [3, 3, 64, 64]
    assert result.throughput_ips == pytest.approx(3000 / result.latency_ms["mean"], rel=1e-2)


def test_fixed_batch_mismatch_and_bad_counts_are_one_line_errors(tiny_detector: Path, tmp_path: Path) -> None:
    with load_runner(tiny_detector) as runner:
        with pytest.raises(QuantError, match="fixed batch of 1, --batch 4"):
            benchmark(runner, batch=4)
        with pytest.raises(QuantError, match="must be positive"):
            benchmark(runner, iterations=0)
    with pytest.raises(QuantError, match="unknown backend"):
        load_runner(tiny_detector, backend="tensorflow")
    with load_runner(classifier_onnx(tmp_path / "cls.onnx")) as runner:  # any single-image model can be timed
        assert benchmark(runner, warmup=0, iterations=1).input_shape == [1, 3, 64, 64]
