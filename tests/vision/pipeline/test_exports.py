"""Exports users make for TensorRT build: FP16 weights and I/O, old opsets. Tiny graphs made here (no Ultralytics):
FP16 with onnxruntime.transformers' float16 converter (the one Ultralytics' CPU ``half=True`` export uses), opset
11/12 written directly (onnx's version converter cannot lower the opset of these ops)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quant_common.errors import QuantError
from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from vision.artifacts.cache import read_cache
from vision.artifacts.qdq_verify import check_loads_in_onnxruntime
from vision.backends.onnxrt import create_session
from vision.config import load_config
from vision.model_prep import cast_io, widen_fp16
from vision.pipeline.build import build


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("export-images")
    synthetic_images(directory, 8)
    return directory


def _fp16(tmp_path, name="tiny_fp16.onnx", keep_io_types=False):
    """``keep_io_types=False``: FP16 weights and I/O (a GPU ``half=True`` export, model.half() traced);
    ``True``: FP32 I/O cast inside, the Casts appended after their readers (Ultralytics' CPU ``half=True``)."""
    from onnxruntime.transformers import float16

    model = onnx.load(tiny_detector_onnx(tmp_path))
    path = tmp_path / name
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=keep_io_types), path)
    return path


def _run(path, batch, dtype):
    feeds = {"images": np.random.default_rng(5).random((batch, 3, 64, 64)).astype(dtype)}
    (out,) = create_session(path).run(None, feeds)
    return out


@pytest.fixture(scope="module")
def fp16_build(tmp_path_factory, images):
    root = tmp_path_factory.mktemp("fp16")
    model = _fp16(root)
    return model, build(load_config(model=model, calib_data=images, out=root / "out"))


def test_fp16_export_builds_with_fp32_statistics_and_fp16_io(fp16_build):
    model, result = fp16_build
    out = result.out_dir
    manifest = json.loads((out / "build.json").read_text())
    prepared = manifest["model"]["prepared"]
    assert prepared["io_dtype"] == "float16" and prepared["calibration_dtype"] == "float32"
    assert prepared["path"] == "model.prepared.onnx" and (out / "model.prepared.onnx").is_file()
    # the cache belongs to the FP32 twin that was calibrated (and names the same tensors as the FP16 model)
    assert json.loads((out / "calibration.cache.json").read_text())["model_sha256"] == prepared["sha256"]
    assert "images" in read_cache(out / "calibration.cache").scales
    reference = _run(model, 1, np.float16).astype(np.float32)
    # FP16 float parts in the TensorRT layout of an FP16 export, FP32 between Q/DQ in the ONNX Runtime one
    for name, high in (("model.int8.onnx", "float16"), ("model.int8.ort.onnx", "float32")):
        assert result.int8.qdq[name]["io_dtype"] == "float16"
        assert result.int8.qdq[name]["high_precision_dtype"] == high
        got = _run(out / name, 1, np.float16)
        assert got.dtype == np.float16 and got.shape == reference.shape
        cosine = float(np.dot(got.ravel(), reference.ravel()) /
                       (np.linalg.norm(got.astype(np.float32)) * np.linalg.norm(reference)))
        assert cosine > 0.99, (name, cosine)
    trt = onnx.load(str(out / "model.int8.onnx"))
    assert trt.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert trt.graph.node[0].op_type == "Identity"  # FP16 image into the FP16 graph: the round-trip cast folded
    ort = onnx.load(str(out / "model.int8.ort.onnx"))
    assert ort.graph.node[0].op_type == "Cast"  # FP16 image -> the FP32 graph


def test_cpu_half_export_with_fp32_io_and_unsorted_nodes_builds(tmp_path, images):
    model = _fp16(tmp_path, keep_io_types=True)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(onnx.load(model))
    result = build(load_config(model=model, calib_data=images, out=tmp_path / "out", agreement_images=0))
    prepared = json.loads((tmp_path / "out" / "build.json").read_text())["model"]["prepared"]
    assert prepared["io_dtype"] == "float32" and prepared["half"]
    assert any("topological" in change for change in prepared["changes"])
    assert result.int8.qdq["model.int8.onnx"]["high_precision_dtype"] == "float16"
    reference = _run(model, 1, np.float32)
    for name in ("model.int8.onnx", "model.int8.ort.onnx"):
        got = _run(result.out_dir / name, 1, np.float32)
        assert got.dtype == np.float32 and got.shape == reference.shape and np.isfinite(got).all()


def test_fp16_round_trip_casts_are_folded():
    from vision.model_prep import cast_io

    # what modelopt's FP16 layout looks like: FP32 I/O cast to FP16 and back around an FP16 graph
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])
    nodes = [helper.make_node("Cast", ["images"], ["x16"], to=TensorProto.FLOAT16, name="in_cast"),
             helper.make_node("Relu", ["x16"], ["y16"], name="relu"),
             helper.make_node("Cast", ["y16"], ["out"], to=TensorProto.FLOAT, name="out_cast")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    cast = cast_io(model, "float16")
    assert [n.op_type for n in cast.graph.node] == ["Identity", "Relu", "Identity"]
    onnx.checker.check_model(cast)


def test_widened_fp16_model_computes_what_the_fp16_model_does(tmp_path):
    model = onnx.load(_fp16(tmp_path))
    wide = widen_fp16(model)
    assert all(i.data_type != TensorProto.FLOAT16 for i in wide.graph.initializer)
    assert [n.name for n in wide.graph.node] == [n.name for n in model.graph.node]
    half = _run(tmp_path / "tiny_fp16.onnx", 1, np.float16).astype(np.float32)
    onnx.save(wide, tmp_path / "wide.onnx")
    full = _run(tmp_path / "wide.onnx", 1, np.float32)
    assert np.abs(half - full).max() < 0.05 * np.abs(full).max()
    # and cast_io restores FP16 I/O around the FP32 graph
    onnx.save(cast_io(wide, "float16"), tmp_path / "io.onnx")
    assert _run(tmp_path / "io.onnx", 1, np.float16).dtype == np.float16


@pytest.mark.parametrize("opset", [11, 12])
def test_old_opset_export_is_lifted_to_13_and_builds(tmp_path, images, opset):
    model = tiny_detector_onnx(tmp_path, opset=opset, name=f"tiny_op{opset}.onnx")
    result = build(load_config(model=model, calib_data=images, out=tmp_path / "out", agreement_images=0))
    manifest = json.loads((tmp_path / "out" / "build.json").read_text())
    prepared = manifest["model"]["prepared"]
    assert prepared["original_opset"] == opset and prepared["opset"] == 13
    assert any("opset" in change for change in prepared["changes"])
    assert json.loads((tmp_path / "out" / "calibration.cache.json").read_text())["model_sha256"] == prepared["sha256"]
    reference = _run(model, 1, np.float32)
    for name in ("model.int8.onnx", "model.int8.ort.onnx"):
        got = _run(result.out_dir / name, 1, np.float32)
        assert got.shape == reference.shape and np.isfinite(got).all()


@pytest.mark.parametrize("opset", [17, 21])
def test_current_exports_are_used_as_they_are(tmp_path, images, opset):
    model = tiny_detector_onnx(tmp_path)
    if opset != 17:
        from onnx import version_converter

        lifted = version_converter.convert_version(onnx.load(model), opset)
        lifted.ir_version = 10
        onnx.save(lifted, model)
    build(load_config(model=model, calib_data=images, out=tmp_path / "out", agreement_images=0))
    prepared = json.loads((tmp_path / "out" / "build.json").read_text())["model"]["prepared"]
    assert prepared["changes"] == [] and prepared["path"] is None
    assert not (tmp_path / "out" / "model.prepared.onnx").exists()


def test_a_model_we_wrote_that_onnxruntime_rejects_is_reported_as_our_bug(tmp_path):
    # what the ORT writer used to make of FP16 exports: a DequantizeLinear with a float16 scale on int8 weights
    # whose zero point type disagrees
    weight = helper.make_tensor("w_q", TensorProto.INT8, [2], [1, 2])
    scale = helper.make_tensor("w_scale", TensorProto.FLOAT16, [], [0.5])
    zero = helper.make_tensor("w_zp", TensorProto.UINT8, [], [0])
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="/model.1/weight_DQ"),
         helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [weight, scale, zero])
    path = tmp_path / "model.int8.ort.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(QuantError) as caught:
        check_loads_in_onnxruntime(path, "onnxruntime")
    message = str(caught.value)
    assert "vision-quant bug" in message and "/model.1/weight_DQ" in message
    assert "truncated" not in message and "re-export" not in message


@pytest.mark.parametrize("task", ["segment", "pose", "obb", "classify"])
def test_other_tasks_are_refused_in_one_line_before_any_work(tmp_path, task):
    model = onnx.load(tiny_detector_onnx(tmp_path))
    helper.set_model_props(model, {"task": task, "imgsz": "[64, 64]"})
    path = tmp_path / f"{task}.onnx"
    onnx.save(model, path)
    with pytest.raises(QuantError, match=f"'{task}' export.*detection models only"):
        build(load_config(model=path, out=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_task_is_read_from_the_graph_without_metadata(tmp_path):
    from vision.export_kinds import export_kind, graph_task
    from vision.model import inspect_model

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    pooled = helper.make_node("GlobalAveragePool", ["images"], ["p"])
    flat = helper.make_node("Flatten", ["p"], ["probs"])
    classify = helper.make_model(helper.make_graph(
        [pooled, flat], "cls", [x], [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])]))
    assert graph_task(classify) == "classify"
    detector = onnx.load(tiny_detector_onnx(tmp_path))
    kind = export_kind(inspect_model(detector, tmp_path / "tiny_detector.onnx"), detector)
    assert (kind.task, kind.end_to_end, kind.task_source) == ("detect", False, "graph")


def test_end_to_end_export_calibrates_up_to_the_nms_and_keeps_the_tail_float(tmp_path, images):
    from tests.vision.conftest import with_nms_tail
    from vision.evaluation.yolo import postprocess
    from vision.export_kinds import export_kind
    from vision.model import load_model

    model = with_nms_tail(tiny_detector_onnx(tmp_path))
    info, proto = load_model(model)
    assert export_kind(info, proto).end_to_end  # from the [1, 20, 6] output alone (no metadata)
    result = build(load_config(model=model, calib_data=images, out=tmp_path / "out", agreement_images=0))
    export = json.loads((tmp_path / "out" / "build.json").read_text())["model"]["export"]
    assert export["end_to_end"] and export["raw_head"] == "output0_raw" and export["nms_tail_nodes"] > 10
    scales = read_cache(tmp_path / "out" / "calibration.cache").scales
    assert "output0_raw" in scales and not {"xyxy", "kept_boxes", "dets", "output0"} & set(scales)
    assert "/nms/xyxy" in result.int8.float_layers and "/nms/selected" in result.int8.float_layers
    # the box transform in the tail keeps its float weight: only the network's 7 Conv + 1 MatMul are INT8
    assert result.int8.qdq["model.int8.ort.onnx"]["per_channel_weights"] == 8
    reference = postprocess(_run(model, 1, np.float32), conf=0.25)[0]
    assert len(reference) > 0
    for name in ("model.int8.onnx", "model.int8.ort.onnx"):
        out = _run(result.out_dir / name, 1, np.float32)
        assert out.shape == (1, 20, 6)
        detections = postprocess(out, conf=0.25)[0]  # final rows read as detections, not as a raw head
        assert len(detections) > 0 and set(detections.classes) <= set(range(4))


def test_ultralytics_metadata_marks_end_to_end_and_task(tmp_path):
    from vision.export_kinds import export_kind
    from vision.model import inspect_model

    model = onnx.load(tiny_detector_onnx(tmp_path))
    helper.set_model_props(model, {"task": "detect", "end2end": "False",
                                   "args": "{'batch': 1, 'nms': True, 'dynamic': False}"})
    onnx.save(model, tmp_path / "m.onnx")
    kind = export_kind(inspect_model(model, tmp_path / "m.onnx"), model)
    assert (kind.task, kind.end_to_end, kind.task_source) == ("detect", True, "metadata")


def test_raw_head_of_the_trained_detector_behind_an_nms_tail(tmp_path):
    from tests.vision.conftest import with_nms_tail
    from vision.config import BUNDLED_MODEL
    from vision.export_kinds import end_to_end_tail

    if not BUNDLED_MODEL.is_file():
        pytest.skip("the bundled detector is not installed")
    model = onnx.load(with_nms_tail(BUNDLED_MODEL, max_det=300, conf=0.001, out_dir=tmp_path))
    head, tail = end_to_end_tail(model)
    # not the class-score tensor (1 x nc x N, it feeds only the NMS scores): the head feeding boxes and scores
    assert head == "output0_raw" and "/nms/selected" in tail and "/nms/xyxy" in tail


def test_trt_high_precision_fp32_stays_available(tmp_path, images):
    """Issue 21 item 2: FP16 float parts are the default for TensorRT >= 10 targets; --trt-high-precision fp32
    keeps them FP32, and an 8.6 target (weakly typed Q/DQ builds) gets FP32 by itself."""
    model = _fp16(tmp_path)
    result = build(load_config(model=model, calib_data=images, out=tmp_path / "out", agreement_images=0,
                               trt_high_precision="fp32"))
    facts = result.int8.qdq["model.int8.onnx"]
    assert facts["high_precision_dtype"] == "float32" and facts["target_high_precision"] == "float16"
    plain = tiny_detector_onnx(tmp_path, name="plain.onnx")
    old = build(load_config(model=plain, calib_data=images, out=tmp_path / "o86", agreement_images=0,
                            trt_version="8.6.1"))
    assert old.int8.qdq["model.int8.onnx"]["high_precision_dtype"] == "float32"
    new = build(load_config(model=plain, calib_data=images, out=tmp_path / "o10", agreement_images=0))
    assert new.int8.qdq["model.int8.onnx"]["high_precision_dtype"] == "float16"
    got = _run(result.out_dir / "model.int8.onnx", 1, np.float16)
    assert got.dtype == np.float16 and np.isfinite(got.astype(np.float32)).all()
