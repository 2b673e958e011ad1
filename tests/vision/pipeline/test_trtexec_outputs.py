"""What a default `vision-quant build` hands a TensorRT user (issue 21 items 1-7): trtexec lines runnable in the
output directory, a cache trtexec's calibrator accepts, the head kept in float, caches re-labelled for another
TensorRT, the export's metadata on every Q/DQ model. Checked against the TensorRT fact table, not against strings
typed here."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from vision.artifacts.cache import read_cache
from vision.artifacts.trtexec import options_used
from vision.backends.fp16_onnx import emulate_fp16_storage
from vision.backends.onnxrt import OnnxrtRunner
from vision.backends.upstream import tensorrt_facts
from vision.config import load_config
from vision.graph import float_compute_nodes, head_nodes
from vision.pipeline.build import build

ROOT = Path(__file__).resolve().parents[3]
META = {"names": "{0: 'square', 1: 'circle', 2: 'triangle', 3: 'star'}", "imgsz": "[64, 64]", "stride": "32",
        "task": "detect"}


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    """The default build (minmax, the default TensorRT target) of a model living outside --out, with metadata."""
    root = tmp_path_factory.mktemp("trtexec")
    source = root / "models" / "detector.onnx"
    source.parent.mkdir()
    model = onnx.load(tiny_detector_onnx(root, dynamic_batch=True))
    for key, value in META.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, source)
    synthetic_images(root / "images", 6)
    cfg = load_config(model=source, calib_data=root / "images", out=root / "out", imgsz=64, batch=2)
    result = build(cfg)
    return cfg, result, json.loads((cfg.out / "build.json").read_text())


def _trtexec_calibrator_algorithm(version: str) -> str:
    """The cache header word of trtexec's calibrator: an IInt8EntropyCalibrator2 (sampleEngines.cpp)."""
    classes = tensorrt_facts().calibrator_classes(version)
    return next(algorithm for algorithm, cls in classes.items() if cls == "IInt8EntropyCalibrator2")


def test_every_trtexec_line_runs_in_the_output_directory(default_build):
    """Items 1 and 6: --onnx named a model outside --out, --calib a cache trtexec ignores, and both INT8 lines
    wrote model.int8.engine."""
    cfg, _, manifest = default_build
    plan = manifest["trtexec"]
    version = plan["tensorrt"]
    lines = {key: value for key, value in plan.items() if key not in ("tensorrt", "notes")}
    assert set(lines) == {"fp32", "fp16", "int8_cache", "int8_qdq"}
    for key, line in lines.items():
        args = shlex.split(line["command"])
        for option in options_used(line["command"]):
            assert tensorrt_facts().trtexec_parses(version, option), (key, option)
        named = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
        assert named["--onnx"] == line["onnx"] and named["--saveEngine"] == line["engine"]
        for name in line["reads"]:
            assert (cfg.out / name).is_file(), (key, name)
    engines = [line["engine"] for line in lines.values()]
    assert len(set(engines)) == len(engines)
    # the published copy is the model the cache belongs to
    assert onnx.load(str(cfg.out / lines["fp32"]["onnx"])).graph.node[0].name == onnx.load(
        str(cfg.model)).graph.node[0].name


def test_the_cache_line_reads_the_same_scales_under_trtexecs_header(default_build):
    """Item 1: trtexec's only calibrator (IInt8EntropyCalibrator2) binds no data when given a cache, so a
    MinMaxCalibration header (the default calibrator's) failed the build."""
    cfg, _, manifest = default_build
    line = manifest["trtexec"]["int8_cache"]
    ours = read_cache(cfg.out / "calibration.cache")
    theirs = read_cache(cfg.out / line["calib"])
    version = manifest["trtexec"]["tensorrt"]
    assert ours.algorithm == "MinMaxCalibration"  # the default calibrator, which trtexec cannot read
    assert theirs.algorithm == _trtexec_calibrator_algorithm(version)
    assert theirs.trt_version == ours.trt_version == version
    assert theirs.scales == ours.scales
    # build.json says which exact TensorRT and calibrator each cache serves
    served = manifest["caches"][line["calib"]]
    assert served["tensorrt_version"] == version and served["algorithm"] == theirs.algorithm
    assert manifest["caches"]["calibration.cache"]["header"] == ours.header


def test_the_cache_line_keeps_the_head_in_fp32(default_build):
    """Item 4: the line now carries the precision constraints our own engine build applies."""
    cfg, result, manifest = default_build
    line = manifest["trtexec"]["int8_cache"]
    named = dict(a.split("=", 1) for a in shlex.split(line["command"]) if "=" in a)
    assert named["--precisionConstraints"] == "obey"
    model = onnx.load(str(cfg.out / line["onnx"]))
    expected = float_compute_nodes(model, result.int8.float_layers)
    assert expected and set(expected) <= set(head_nodes(model))
    for option in ("--layerPrecisions", "--layerOutputTypes"):
        assert [entry.rsplit(":", 1) for entry in named[option].split(",")] == [[n, "fp32"] for n in expected]
    assert line["float_layers"] == len(expected)


def test_float_constraints_skip_constants_and_integer_layers():
    """Item 6: Constant nodes create no TensorRT layer, and FP32 forced on integer/bool layers (shape math, an NMS
    tail) under OBEY fails the build."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    n = helper.make_tensor_value_info("n", TensorProto.INT64, [1])
    nodes = [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0]),
                              name="const"),
             helper.make_node("Mul", ["x", "c"], ["m"], name="mul"),
             helper.make_node("Sigmoid", ["m"], ["y"], name="sigmoid"),
             helper.make_node("Shape", ["m"], ["s"], name="shape"),
             helper.make_node("Greater", ["m", "c"], ["mask"], name="greater"),
             helper.make_node("NonZero", ["mask"], ["idx"], name="nonzero"),
             helper.make_node("ReduceMax", ["idx"], ["n"], name="count", keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y, n]), opset_imports=[helper.make_opsetid("", 17)])
    names = ["const", "mul", "sigmoid", "shape", "greater", "nonzero", "count"]
    assert float_compute_nodes(model, names) == ["mul", "sigmoid"]


def test_default_tensorrt_layout_is_fp16_and_checked_with_emulated_fp16(default_build):
    """Item 2: FP16 float parts for the default (TensorRT >= 10) target; its check does not use ONNX Runtime's CPU
    FP16 kernels."""
    cfg, result, _ = default_build
    facts = result.int8.qdq["model.int8.onnx"]
    assert facts["high_precision_dtype"] == "float16"
    assert facts["onnxruntime_check"]["runtime"] == "onnxruntime[fp16 emulated]"
    with OnnxrtRunner(cfg.out / "model.int8.onnx") as runner:
        runner.infer({"images": np.zeros((1, 3, 64, 64), np.float32)})
        assert runner.backend == "onnxruntime[fp16 emulated]"


def test_fp16_emulation_rounds_every_fp16_tensor_and_computes_in_fp32():
    """FP32 arithmetic, FP16 storage: what TensorRT's FP16 kernels write between layers."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="in"),
             helper.make_node("Conv", ["x16", "w"], ["c16"], name="conv"),
             helper.make_node("Sigmoid", ["c16"], ["s16"], name="sig"),
             helper.make_node("Cast", ["s16"], ["y"], to=TensorProto.FLOAT, name="out")]
    graph = helper.make_graph(nodes, "g", [x], [y], [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    with OnnxrtRunner(emulate_fp16_storage(model)) as runner:
        got = runner.infer(feed)["y"]
    # the same by hand: inputs and weights rounded to FP16, conv in FP32, its output rounded, sigmoid, rounded
    xs = feed["x"].astype(np.float16).astype(np.float32)
    conv = np.zeros((1, 4, 6, 6), np.float32)
    for o in range(4):
        for i in range(6):
            for j in range(6):
                conv[0, o, i, j] = np.sum(xs[0, :, i:i + 3, j:j + 3] * w[o].astype(np.float32))
    conv = conv.astype(np.float16).astype(np.float32)
    expected = (1 / (1 + np.exp(-conv))).astype(np.float16).astype(np.float32)
    assert np.allclose(got, expected, atol=1e-3)


def test_every_qdq_model_keeps_the_exports_metadata(default_build):
    """Item 7: modelopt's model.int8.onnx lost the export's class names, imgsz and stride."""
    cfg, _, _ = default_build
    for name in ("model.onnx", "model.int8.onnx", "model.int8.ort.onnx", "model.int8.ov.onnx"):
        props = {p.key: p.value for p in onnx.load(str(cfg.out / name), load_external_data=False).metadata_props}
        assert {k: props.get(k) for k in META} == META, name


def test_cache_retarget_relabels_without_recalibrating(default_build, tmp_path):
    """Item 3: the header pins one exact TensorRT version; the same scales, re-labelled, serve another version and
    are reused by a build targeting it."""
    cfg, first, _ = default_build
    out = tmp_path / "calibration.10.16.cache"
    run = subprocess.run([sys.executable, "-m", "vision.cli", "cache", "retarget", str(cfg.out / "calibration.cache"),
                          "--trt-version", "10.16.0", "--out", str(out), "--json"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert run.returncode == 0, run.stderr
    new, old = read_cache(out), read_cache(cfg.out / "calibration.cache")
    assert new.header == f"TRT-101600-{old.algorithm}" and new.scales == old.scales
    sidecar = json.loads((tmp_path / "calibration.10.16.cache.json").read_text())
    assert sidecar["trt_version"] == "10.16.0" and sidecar["retargeted_from"] == old.header
    again = build(cfg.model_copy(update={"calib_cache": out, "trt_version": "10.16.0", "out": tmp_path / "o",
                                         "agreement_images": 0}))
    assert again.int8.cache_reused and not first.int8.cache_reused
    assert json.loads((tmp_path / "o" / "build.json").read_text())["trtexec"]["tensorrt"] == "10.16.0"
    # the published cache is never written over, and a version without caches is refused in one line
    bad = subprocess.run([sys.executable, "-m", "vision.cli", "cache", "retarget", str(out), "--trt-version", "11.4",
                          "--out", str(tmp_path / "x.cache")], cwd=ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "no calibration caches" in bad.stderr


def test_fp16_layout_casts_an_fp32_input_left_among_fp16_ones(tmp_path):
    """Seen on an unseen export (YOLO11n, Ultralytics 8.4 nms=True): modelopt's FP16 conversion left the class
    index Cast(to=FLOAT) feeding the final Concat in FP32 beside FP16 boxes, and the model did not load."""
    from vision.artifacts.qdq_trt import cast_mixed_float_inputs
    from vision.artifacts.qdq_verify import check_loads_in_onnxruntime

    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT16, [1, 3, 4])
    classes = helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 3, 1])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT16, [1, 3, 5])
    nodes = [helper.make_node("Cast", ["classes"], ["cls_f"], to=TensorProto.FLOAT, name="/Cast"),
             helper.make_node("Concat", ["boxes", "cls_f"], ["out"], axis=-1, name="/Concat_1")]
    model = helper.make_model(helper.make_graph(nodes, "g", [boxes, classes], [out]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "mixed.onnx"
    onnx.save(model, path)
    with pytest.raises(Exception, match="Concat_1"):
        check_loads_in_onnxruntime(path, "tensorrt")
    assert cast_mixed_float_inputs(model) == ["/Concat_1"]
    onnx.save(model, path)
    check_loads_in_onnxruntime(path, "tensorrt")
    with OnnxrtRunner(path, fp16="native") as runner:
        got = runner.infer({"boxes": np.ones((1, 3, 4), np.float16), "classes": np.array([[[7], [2], [79]]])})
    assert got["out"][0, :, 4].tolist() == [7.0, 2.0, 79.0]
