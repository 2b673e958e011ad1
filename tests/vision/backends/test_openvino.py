"""OpenVINO: the runner against ONNX Runtime (the reference), its one-line failures, and the OpenVINO Q/DQ layout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant_common.errors import MissingDependencyError, QuantError
from vision.artifacts.qdq_ov import (
    ACTIVATION_ZERO_POINT,
    SILU_MIN,
    activation_quantization,
    quantize_weight,
    write_openvino_qdq,
)
from vision.artifacts.qdq_verify import activation_q_scales
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.select import load_runner
from vision.evaluation.agreement import compare
from vision.graph import head_nodes, quantizable_tensors

pytest.importorskip("openvino")
from vision.backends.openvino import OpenvinoRunner, by_kernel, layer_profile  # noqa: E402

BUNDLED = Path(__file__).resolve().parents[3] / "vision" / "assets" / "yolov8n_shapes.onnx"


def _feeds(size: int, count: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"images": rng.random((1, 3, size, size), dtype=np.float32)} for _ in range(count)]


def _scales(model: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """amax/127 of every quantizable tensor over ``feeds`` (what a MinMax cache holds), via ONNX Runtime."""
    loaded = onnx.load(str(model))
    names = quantizable_tensors(loaded)
    del loaded.graph.output[:]
    loaded.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names])
    import onnxruntime as ort

    session = ort.InferenceSession(loaded.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = np.zeros(len(names))
    for feed in feeds:
        amax = np.maximum(amax, [float(np.abs(v).max()) for v in session.run(names, feed)])
    return {n: max(float(a), 1e-6) / 127.0 for n, a in zip(names, amax, strict=True)}


def test_auto_picks_openvino_for_onnx_and_matches_onnxruntime_in_fp32(tiny_detector: Path) -> None:
    runner = load_runner(tiny_detector, threads=1)
    assert isinstance(runner, OpenvinoRunner) and runner.precision == "f32"
    feeds = _feeds(64, 2)
    with runner, OnnxrtRunner(tiny_detector) as reference:
        assert [s.name for s in runner.input_specs()] == ["images"]
        assert runner.output_specs()[0].shape == reference.output_specs()[0].shape
        for feed in feeds:
            got, want = runner.infer(feed)["output0"], reference.infer(feed)["output0"]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert runner.backend == "openvino[f32]" and runner.inference_time is not None


def test_explicit_backends_and_missing_openvino_are_one_line(tiny_detector: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(load_runner(tiny_detector, "onnxruntime"), OnnxrtRunner)
    engine = tiny_detector.with_suffix(".engine")
    engine.write_bytes(b"not an engine")
    with pytest.raises(QuantError, match="OpenVINO cannot run the TensorRT engine"):
        load_runner(engine, "openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError, as when not installed
    with pytest.raises(MissingDependencyError, match="needs the Python module 'openvino'"):
        load_runner(tiny_detector, "openvino")
    assert isinstance(load_runner(tiny_detector), OnnxrtRunner)  # auto falls back to ONNX Runtime


def test_unreadable_model_and_unsupported_op_name_the_problem(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(BUNDLED.read_bytes()[:5000])
    with pytest.raises(QuantError, match="OpenVINO cannot read truncated.onnx") as info:
        OpenvinoRunner(truncated).activate()
    assert "\n" not in str(info.value)
    node = helper.make_node("NoSuchOp", ["x"], ["y"], name="custom", domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    custom = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), str(custom))
    with pytest.raises(QuantError, match="OpenVINO cannot (read|compile) custom.onnx") as info:
        OpenvinoRunner(custom).activate()
    assert "NoSuchOp" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(QuantError, match="unknown OpenVINO precision"):
        OpenvinoRunner(custom, precision="int4").activate()  # type: ignore[arg-type]


def test_weights_are_symmetric_per_output_channel() -> None:
    weight = np.array([[[[0.5, -1.0]]], [[[0.0, 0.0]]], [[[2.54, 1.27]]]], dtype=np.float32)
    q, scales = quantize_weight(weight)
    assert q.dtype == np.int8 and scales.shape == (3,)
    np.testing.assert_allclose(scales[[0, 2]], [1.0 / 127, 2.54 / 127], rtol=1e-6)
    assert q[0].ravel().tolist() == [64, -127] and q[1].ravel().tolist() == [0, 0] and q[2].max() == 127
    assert scales[1] > 0  # an all-zero channel still gets a usable scale


def test_activation_range_starts_at_a_known_lower_bound() -> None:
    amax = 12.7
    assert activation_quantization(amax / 127, [None]) == (amax / 127, ACTIVATION_ZERO_POINT)  # unknown: symmetric
    assert activation_quantization(amax / 127, [SILU_MIN, None]) == (amax / 127, ACTIVATION_ZERO_POINT)
    scale, zero_point = activation_quantization(amax / 127, [SILU_MIN, 2 * SILU_MIN])  # a group: its lowest bound
    assert np.isclose(scale, (amax - 2 * SILU_MIN) / 255) and zero_point == round(-2 * SILU_MIN / scale)
    assert scale < 0.52 * amax / 127  # about twice the symmetric resolution
    scale, zero_point = activation_quantization(0.1 / 127, [SILU_MIN])  # bound below -amax: no wider than symmetric
    assert zero_point == 128 and np.isclose(scale, 0.2 / 255)
    assert activation_quantization(amax / 127, [0.0]) == (amax / 255, 0)  # ReLU/Sigmoid outputs


def test_layout_quantizes_conv_inputs_only_with_our_scales(tiny_detector: Path, tmp_path: Path) -> None:
    scales = _scales(tiny_detector, _feeds(64, 2))
    head = head_nodes(onnx.load(str(tiny_detector)))
    out = tmp_path / "model.int8.ov.onnx"
    summary = write_openvino_qdq(tiny_detector, scales, out, nodes_to_exclude=head)
    model = onnx.load(str(out))
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dq_outputs = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    readers = {c.op_type for t in dq_outputs for c in consumers[t]}
    # pass-through ops and residual Adds quantized at their inputs
    assert readers == {"Conv", "Split", "MaxPool", "Resize", "Concat", "Add"}, readers
    assert not any(c.name in head for t in dq_outputs for c in consumers[t])
    # the C2f-like Split reads a DQ; the Conv behind it reads the Split's output as is (LPT carries the DQ through)
    by_output = {o: n for n in model.graph.node for o in n.output}
    c2f_split = next(n for n in model.graph.node if n.op_type == "Split" and n.name not in head)
    assert by_output[c2f_split.input[0]].op_type == "DequantizeLinear"
    assert any(c.op_type == "Conv" for o in c2f_split.output for c in consumers.get(o, []))
    # the detection head's Split (outputs decoded in float) gets no Q/DQ
    head_split = next(n for n in model.graph.node if n.op_type == "Split" and n is not c2f_split)
    assert by_output[head_split.input[0]].op_type != "DequantizeLinear"
    found = activation_q_scales(model)
    assert summary.activation_tensors == len(found) == summary.matched_scales > 0
    largest = 127 * max(scales.values())
    silu_outputs = {n.output[0] for n in onnx.load(str(tiny_detector)).graph.node if n.op_type == "Mul"}
    for tensor, (scale, zero_point) in found.items():
        assert zero_point is not None and zero_point.dtype == np.uint8
        scale, zero_point = float(scale), int(zero_point)
        top, bottom = (255 - zero_point) * scale, -zero_point * scale
        # the range reaches the tensor's own calibrated amax (a group may share a larger one), all from the cache
        assert 127 * scales[tensor] - scale <= top <= largest + scale, tensor
        if tensor in silu_outputs:  # SiLU never goes below -0.278: the levels start there (or at the lowest bound
            # in its group, e.g. a residual Add's -0.557), not at -amax
            assert zero_point < ACTIVATION_ZERO_POINT and 2 * SILU_MIN - scale <= bottom <= SILU_MIN + scale, tensor
    assert found["images"][0] == np.float32(scales["images"]) and int(found["images"][1]) == ACTIVATION_ZERO_POINT
    # one scale per Concat: every input and the Split halves feeding it carry the same quantization
    q_scale = {n.output[0]: found[n.input[0]][0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_scale = {n.output[0]: q_scale[n.input[0]] for n in model.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in q_scale}

    def carried_scale(tensor: str) -> float:
        node = by_output[tensor]
        return float(dq_scale[tensor]) if tensor in dq_scale else carried_scale(node.input[0])

    concats = [n for n in model.graph.node if n.op_type == "Concat" and n.name not in head
               and any(i in dq_scale for i in n.input)]
    assert concats
    for concat in concats:
        assert len({carried_scale(i) for i in concat.input}) == 1, concat.name
    shared = [t for t, (scale, zp) in found.items() if (255 - int(zp)) * float(scale) > 127 * scales[t] + scale]
    assert shared, "no tensor takes a larger group range: the Concat groups are not unified"
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dq and all(inits[n.input[0]].dtype == np.int8 and inits[n.input[1]].size > 1 for n in weight_dq)
    assert summary.per_channel_weights == len(weight_dq) and summary.per_tensor_weights == 0
    with pytest.raises(QuantError, match="not in tiny_detector.onnx"):
        write_openvino_qdq(tiny_detector, scales, tmp_path / "x.onnx", nodes_to_exclude=["/no/such/node"])
    convs_only = tmp_path / "convs_only.onnx"
    write_openvino_qdq(tiny_detector, scales, convs_only, nodes_to_exclude=head, pass_through=())
    plain = onnx.load(str(convs_only))
    plain_consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in plain.graph.node:
        for name in node.input:
            plain_consumers.setdefault(name, []).append(node)
    assert {c.op_type for n in plain.graph.node if n.op_type == "DequantizeLinear"
            for c in plain_consumers[n.output[0]]} == {"Conv"}


def test_openvino_runs_concats_and_residual_adds_on_uint8(tiny_detector: Path, tmp_path: Path) -> None:
    """What the layout is for: OpenVINO's compiled graph keeps every C2f Concat and residual Add on uint8 and has no
    requantizing subgraph (uint8 in, uint8 out) in front of a Concat; each was a separate kernel call before the
    Concat groups shared one scale."""
    ov = pytest.importorskip("openvino")
    scales = _scales(tiny_detector, _feeds(64, 2))
    out = tmp_path / "model.int8.ov.onnx"
    write_openvino_qdq(tiny_detector, scales, out, nodes_to_exclude=head_nodes(onnx.load(str(tiny_detector))))
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(out)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    layers = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layers.append((str(info["layerType"].value), str(info["runtimePrecision"].value),
                       str(info["outputPrecisions"].value), op.get_friendly_name()))
    body = [layer for layer in layers if "/model.22/" not in layer[3] and layer[3] != "output0"]
    concats = [layer for layer in body if layer[0] == "Concatenation"]
    adds = [layer for layer in body if layer[0] in ("Eltwise", "Add") or layer[3].endswith("/Add")]
    assert concats and all(layer[1] == "u8" for layer in concats), concats
    assert adds and all(layer[1] == "u8" for layer in adds), adds
    requantize = [layer for layer in body if layer[0] == "Subgraph" and layer[1] == "u8" and layer[2] == "u8"]
    assert not requantize, requantize


def test_openvino_runs_its_layout_as_onnxruntime_does(tiny_detector: Path, tmp_path: Path) -> None:
    """OpenVINO's integer kernels vs ONNX Runtime's reference Q/DQ semantics on the same INT8 model."""
    feeds = _feeds(64, 3, seed=1)
    scales = _scales(tiny_detector, feeds)
    out = tmp_path / "model.int8.ov.onnx"
    write_openvino_qdq(tiny_detector, scales, out, nodes_to_exclude=head_nodes(onnx.load(str(tiny_detector))))
    same = compare(OnnxrtRunner(out), OpenvinoRunner(out, threads=1), feeds)
    assert same.cosine > 0.999, same
    vs_fp32 = compare(OnnxrtRunner(tiny_detector), OpenvinoRunner(out, threads=1), feeds)
    assert vs_fp32.cosine > 0.99, vs_fp32


@pytest.mark.skipif(not BUNDLED.is_file(), reason="the bundled trained detector is not in this checkout")
def test_trained_detector_gives_the_same_detections_through_every_runtime(tmp_path: Path) -> None:
    """The trained YOLOv8n in INT8 (OpenVINO layout) through OpenVINO and ONNX Runtime, and FP32 through both: the
    anchors FP32 is confident about keep their class and box (IoU >= 0.5) in every runtime."""
    from vision.data.images import CalibrationSet
    from vision.data.synthetic import generate_dataset

    annotations = generate_dataset(tmp_path / "shapes", 6, seed=0, split="val", workers=1)
    del annotations
    images = CalibrationSet.from_source(tmp_path / "shapes" / "images" / "val", "images", (640, 640), 1)
    feeds = [dict(b) for b in images.iter_batches(progress=False)]
    scales = _scales(BUNDLED, feeds[:4])
    out = tmp_path / "model.int8.ov.onnx"
    write_openvino_qdq(BUNDLED, scales, out, nodes_to_exclude=head_nodes(onnx.load(str(BUNDLED))))
    fp32_ov = compare(OnnxrtRunner(BUNDLED), OpenvinoRunner(BUNDLED), feeds)
    assert fp32_ov.detection_match is not None and fp32_ov.detection_match > 0.99, fp32_ov
    for runner in (OnnxrtRunner(out), OpenvinoRunner(out)):
        int8 = compare(OnnxrtRunner(BUNDLED), runner, feeds)
        assert int8.detection_match is not None and int8.detection_match > 0.9, (runner.name, int8)
    across = compare(OnnxrtRunner(out), OpenvinoRunner(out), feeds)
    assert across.detection_match is not None and across.detection_match > 0.95, across
    # what `predict` shows a user: the same objects (class, box IoU >= 0.5) through every runtime and precision
    from vision.evaluation.predict import predict

    files = sorted((tmp_path / "shapes" / "images" / "val").iterdir())[:3]
    reference = predict(OnnxrtRunner(BUNDLED), files, None)
    assert sum(len(r["detections"]) for r in reference) >= 3
    for model, runner in ((BUNDLED, OpenvinoRunner(BUNDLED)), (out, OnnxrtRunner(out)), (out, OpenvinoRunner(out))):
        with runner:
            records = predict(runner, files, None)
        for want, got in zip(reference, records, strict=True):
            assert _matched(want["detections"], got["detections"]) >= 0.9, (model.name, runner.name, want, got)


def _matched(reference: list[dict], candidate: list[dict]) -> float:
    """Share of reference detections with a same-class candidate box of IoU >= 0.5 (1.0 when both are empty)."""
    if not reference:
        return 1.0 if not candidate else 0.0
    hits = 0
    for det in reference:
        a = np.array(det["box_xyxy"])
        for other in candidate:
            b = np.array(other["box_xyxy"])
            inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
            union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
            if other["class"] == det["class"] and inter / union >= 0.5:
                hits += 1
                break
    return hits / len(reference)


def test_seven_bit_weights_for_cpus_without_vnni(tiny_detector: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import vision.artifacts.qdq_ov as qdq_ov
    from vision.artifacts.qdq_ov import resolve_weight_bits

    q, scales = quantize_weight(np.array([[[[0.63, -1.26]]]], dtype=np.float32), bits=7)
    assert q.ravel().tolist() == [32, -63] and np.isclose(scales[0], 1.26 / 63)
    monkeypatch.setattr(qdq_ov, "cpu_has_vnni", lambda: False)
    assert resolve_weight_bits("auto") == 7 and resolve_weight_bits("8") == 8
    monkeypatch.setattr(qdq_ov, "cpu_has_vnni", lambda: True)
    assert resolve_weight_bits("auto") == 8
    scales_act = _scales(tiny_detector, _feeds(64, 1))
    summary = write_openvino_qdq(tiny_detector, scales_act, tmp_path / "w7.onnx", weight_bits="7")
    assert summary.weight_storage == "int7"
    model = onnx.load(str(tmp_path / "w7.onnx"))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer
               if i.data_type == TensorProto.INT8 and len(i.dims) == 4]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 63


def test_auto_leaves_int8_activation_qdq_to_onnxruntime(tiny_detector: Path, tmp_path: Path) -> None:
    """OpenVINO misreads int8 (signed) activation Q/DQ; auto must not hand such a file to it."""
    scales = _scales(tiny_detector, _feeds(64, 1))
    ours = tmp_path / "model.int8.ov.onnx"
    write_openvino_qdq(tiny_detector, scales, ours)
    assert isinstance(load_runner(ours), OpenvinoRunner)
    signed = onnx.load(str(ours))
    for init in signed.graph.initializer:
        if init.name.endswith("_ovq_zero_point"):
            init.CopyFrom(numpy_helper.from_array(np.array(0, dtype=np.int8), init.name))
    path = tmp_path / "signed.onnx"
    onnx.save(signed, str(path))
    assert isinstance(load_runner(path), OnnxrtRunner)
    assert isinstance(load_runner(path, "openvino"), OpenvinoRunner)  # asked for explicitly: the user's call


def test_openvino_runs_split_maxpool_and_resize_of_its_layout_on_int8(tiny_detector: Path, tmp_path: Path) -> None:
    """Why the layout quantizes pass-through ops at their input: OpenVINO then runs them as INT8 kernels (with
    Q/DQ on Conv inputs only, its Split ran in a reference f32 kernel). Read from OpenVINO's own layer counters."""
    scales = _scales(tiny_detector, _feeds(64, 2))
    head = head_nodes(onnx.load(str(tiny_detector)))
    kernels: dict[str, dict[str, str]] = {}
    for name, through in (("layout", None), ("convs_only", ())):
        out = tmp_path / f"{name}.onnx"
        extra = {} if through is None else {"pass_through": through}
        write_openvino_qdq(tiny_detector, scales, out, nodes_to_exclude=head, **extra)
        rows = layer_profile(out, threads=1, runs=1)
        kernels[name] = {r["name"]: r["exec_type"] for r in rows}
        assert any(r["type"] == "Convolution" and r["exec_type"].endswith("_I8") for r in rows)
        assert by_kernel(rows)[0]["ms"] >= by_kernel(rows)[-1]["ms"]
    layout_rows = layer_profile(tmp_path / "layout.onnx", threads=1, runs=1)
    moved = [r for r in layout_rows if r["type"] in ("Split", "VariadicSplit", "MaxPool", "Interpolate")
             and "head" not in r["name"]]
    assert {r["type"] for r in moved} >= {"MaxPool", "Interpolate"}, layout_rows
    c2f_split = [r for r in moved if "Split" in r["type"] and r["exec_type"].endswith("_I8")]
    assert c2f_split, moved
    assert all(r["exec_type"].endswith("_I8") for r in moved if r["type"] in ("MaxPool", "Interpolate")), moved
    assert not kernels["convs_only"].get(c2f_split[0]["name"], "_f32").endswith("_I8")
