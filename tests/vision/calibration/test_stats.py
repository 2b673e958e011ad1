"""Activation statistics: which tensors, exact min/max and counts, order/batch independence, TensorRT parity mode,
re-binning, .npz round trip and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quant_common.errors import QuantError
from tests.vision.conftest import TINY_INPUT, TINY_OUTPUT, image_batches
from vision.calibration import histkernels
from vision.calibration.calibrators import compute_all, entropy2_bin
from vision.calibration.stats import (
    ActivationCollector,
    TensorStats,
    load_stats,
    rebin_fine,
    save_stats,
)
from vision.graph import quantizable_tensors


def _all_activations(model_path: Path, tensors: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Reference: a plain ORT session with every tensor as an output, one image at a time, values kept."""
    model = onnx.load(model_path)
    known = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in tensors if n not in known and n != TINY_INPUT)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = [dict(zip(names, session.run(names, {TINY_INPUT: images[i:i + 1]}), strict=True))
            for i in range(len(images))]
    result = {name: np.concatenate([run[name].ravel() for run in runs]) for name in names}
    result[TINY_INPUT] = images.ravel()
    return result


def test_quantizable_tensors_are_the_float_activations(tiny_detector: Path) -> None:
    model = onnx.load(tiny_detector)
    names = quantizable_tensors(model)
    assert names[0] == TINY_INPUT and names[-1] == TINY_OUTPUT
    ops = {out: node.op_type for node in model.graph.node for out in node.output}
    listed = {ops[name] for name in names[1:]}
    assert {"Conv", "Sigmoid", "Mul", "Split", "Add", "Concat", "MaxPool", "Resize", "Reshape", "Transpose",
            "MatMul"} <= listed
    assert not {"Shape", "Gather"} & listed  # the int64 shape subgraph
    assert not {init.name for init in model.graph.initializer} & set(names)
    shape_concat = next(n.output[0] for n in model.graph.node if n.op_type == "Concat" and "Gather" in n.input[0])
    assert shape_concat not in names
    assert len(names) == len(set(names)) == 35


def test_min_max_and_counts_are_exact(tiny_detector_dynamic: Path) -> None:
    images = image_batches(6, seed=1)
    collector = ActivationCollector(tiny_detector_dynamic)
    outputs = collector.collect({TINY_INPUT: images[:4]})
    collector.collect({TINY_INPUT: images[4:]})
    stats = collector.result()
    assert collector.num_batches == 2 and collector.num_samples == 6
    derived = set(collector.tensors) - set(collector.measured)  # Concat/Reshape/Transpose: sums of their sources
    assert {"/model.19/Concat_output_0", "/model.46/Reshape_output_0", TINY_OUTPUT} <= derived
    reference = _all_activations(tiny_detector_dynamic, collector.tensors, images)
    np.testing.assert_allclose(outputs[TINY_OUTPUT].ravel(), reference[TINY_OUTPUT][:4 * 8 * 256], rtol=1e-5,
                               atol=1e-6)
    for name, item in stats.items():
        values = reference[name]
        assert item.min == pytest.approx(float(values.min()), rel=1e-6, abs=1e-7), name
        assert item.max == pytest.approx(float(values.max()), rel=1e-6, abs=1e-7), name
        assert item.count == values.size and item.hist.dtype == np.int64
        assert item.edges[0] == 0 and item.edges[-1] == pytest.approx(item.absmax) and item.hist.size == 2048
    # the kernel's fine counts equal numpy's bincount of the same keys
    values = reference["/model.5/Mul_output_0"]
    counts = np.zeros(histkernels.FINE_BINS, np.int64)
    low, high, bad = histkernels.fine_update(values.astype(np.float32), counts)
    np.testing.assert_array_equal(counts, np.bincount(histkernels.fine_keys_numpy(values),
                                                      minlength=histkernels.FINE_BINS))
    assert (low, high, bad) == (float(values.min()), float(values.max()), 0)


def _entropy(model: Path, images: np.ndarray, batch: int, order: np.ndarray, mode: str) -> dict[str, float]:
    collector = ActivationCollector(model, histogram=mode)  # type: ignore[arg-type]
    shuffled = images[order]
    for start in range(0, len(shuffled), batch):
        collector.collect({TINY_INPUT: shuffled[start:start + batch]})
    return compute_all(collector.result(), "entropy2")


def test_fine_mode_is_independent_of_order_and_batch_size(tiny_detector_dynamic: Path) -> None:
    images = image_batches(12, seed=2)
    rng = np.random.default_rng(0)
    reference = _entropy(tiny_detector_dynamic, images, 12, np.arange(12), "fine")
    for batch in (1, 5):
        again = _entropy(tiny_detector_dynamic, images, batch, rng.permutation(12), "fine")
        assert again == reference  # identical, not merely within 1 %
    trt_runs = [_entropy(tiny_detector_dynamic, images, batch, rng.permutation(12), "trt") for batch in (1, 4)]
    moved = [abs(trt_runs[0][n] - trt_runs[1][n]) / max(trt_runs[1][n], 1e-12) for n in reference]
    assert max(moved) > 0.0  # TensorRT's growing histogram does depend on order and batch (#1411)


def test_trt_mode_grows_from_the_first_batch(tiny_detector_dynamic: Path) -> None:
    images = image_batches(4, seed=3)
    images[2:] *= 0.5  # later batches smaller...
    images[3, 0, 0, 0] = 1.0
    collector = ActivationCollector(tiny_detector_dynamic, [TINY_INPUT, "/model.3/Conv_output_0"], histogram="trt")
    collector.collect({TINY_INPUT: images[2:3]})  # first batch defines the bin width
    collector.collect({TINY_INPUT: images[:2]})
    stats = collector.result()[TINY_INPUT]
    first_max = float(images[2].max())
    width = first_max / 2048
    assert stats.edges[1] == pytest.approx(width)
    assert stats.hist.size == int(np.ceil(float(images[:3].max()) / width)) > 2048
    assert stats.count == images[:3].size
    size = stats.hist.size

    def counts(batch: np.ndarray, bins: int) -> np.ndarray:  # values at a batch's top edge stay in its last bin
        return np.bincount(np.minimum((np.abs(batch).ravel() / width).astype(np.int64), bins - 1), minlength=size)

    expected = counts(images[2:3], 2048) + counts(images[:2], size)
    assert np.abs(expected - stats.hist).sum() <= 4  # float rounding at bin boundaries only


def test_rebin_keeps_totals_and_tracks_an_exact_histogram() -> None:
    rng = np.random.default_rng(4)
    deltas = []
    for values in (rng.laplace(size=300_000), rng.standard_normal(300_000) * 3,
                   np.r_[rng.exponential(size=200_000), rng.normal(30, 1, 500)], rng.uniform(0.3, 1.0, 100_000)):
        values = values.astype(np.float32)
        counts = np.bincount(histkernels.fine_keys_numpy(values), minlength=histkernels.FINE_BINS)
        absmax = float(np.abs(values).max())
        hist, edges = rebin_fine(counts, absmax)
        assert hist.sum() == values.size and (hist >= 0).all() and edges[0] == 0 and edges[-1] == absmax
        exact, _ = np.histogram(np.abs(values), bins=2048, range=(0, absmax))
        assert np.abs(np.cumsum(hist) - np.cumsum(exact)).max() <= 0.002 * values.size
        ours, truth = entropy2_bin(hist, edges), entropy2_bin(exact, edges)
        deltas.append(abs(ours - truth) / truth)
    assert max(deltas) < 0.05 and sorted(deltas)[len(deltas) // 2] < 0.01
    zero_hist, zero_edges = rebin_fine(np.r_[[5], np.zeros(histkernels.FINE_BINS - 1, np.int64)], 0.0)
    assert zero_hist[0] == 5 and zero_edges[-1] == 0


def test_stats_round_trip_and_bad_files(tmp_path: Path) -> None:
    stats = {
        "a": TensorStats("a", -1.5, 2.0, np.arange(2048, dtype=np.int64), np.linspace(0, 2.0, 2049)),
        "b/c:0": TensorStats("b/c:0", 0.0, 0.0, np.zeros(2100, np.int64), np.zeros(2101)),
    }
    path = tmp_path / "stats.data"  # no .npz suffix: must still land at this exact path
    save_stats(path, stats)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.data"]
    with np.load(path) as raw:
        assert list(raw["names"]) == ["a", "b/c:0"] and raw["min"].dtype == np.float64
    back = load_stats(path)
    assert list(back) == list(stats)
    for name in stats:
        assert back[name].min == stats[name].min and back[name].max == stats[name].max
        np.testing.assert_array_equal(back[name].hist, stats[name].hist)
        np.testing.assert_array_equal(back[name].edges, stats[name].edges)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(QuantError, match="not a valid stats"):
        load_stats(path)
    with pytest.raises(QuantError, match="not found"):
        load_stats(tmp_path / "absent.npz")


def test_bad_input(tiny_detector: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantError, match="not float activations"):
        ActivationCollector(tiny_detector, ["no_such_tensor"])
    with pytest.raises(QuantError, match="histogram mode"):
        ActivationCollector(tiny_detector, histogram="coarse")  # type: ignore[arg-type]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_detector.read_bytes()[:500])
    with pytest.raises(QuantError, match="not a readable ONNX model"):
        ActivationCollector(broken)
    collector = ActivationCollector(tiny_detector, [TINY_INPUT, "/model.3/Conv_output_0"])
    with pytest.raises(QuantError, match="no calibration batch"):
        collector.result()
    with pytest.raises(QuantError, match="lacks input"):
        collector.collect({"other": np.zeros((1, 3, 64, 64), np.float32)})
    with pytest.raises(QuantError, match="ONNX Runtime failed"):
        collector.collect({TINY_INPUT: np.zeros((1, 3, 32, 32), np.float32)})
    bad = image_batches(1)
    bad[0, 0, 0, 0] = np.nan
    collector.collect({TINY_INPUT: bad})
    with pytest.raises(QuantError, match="NaN/inf"):
        collector.result()


def test_num_bins_and_explicit_tensor_subset(tiny_detector: Path) -> None:
    collector = ActivationCollector(tiny_detector, ["/model.5/Mul_output_0", TINY_INPUT], num_bins=512, threads=1)
    collector.collect({TINY_INPUT: image_batches(1)})
    stats = collector.result()
    assert list(stats) == ["/model.5/Mul_output_0", TINY_INPUT]
    assert all(item.hist.size == 512 and item.edges.size == 513 for item in stats.values())
