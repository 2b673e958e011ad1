"""`vision.pipeline.build.build` end to end on the tiny detector, plus one acceptance run on the trained YOLOv8n."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from quant_common.errors import QuantError
from quant_common.manifest import sha256_file
from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from vision.artifacts.cache import read_cache
from vision.backends.onnxrt import create_session
from vision.calibration.calibrators import compute_all
from vision.calibration.stats import ActivationCollector, load_stats
from vision.config import BUNDLED_MODEL, load_config, preset_text
from vision.data.images import CalibrationSet
from vision.pipeline.build import build

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    model = tiny_detector_onnx(root, dynamic_batch=True)
    images = root / "images"
    synthetic_images(images, 12)
    return root, model, images


@pytest.fixture(scope="module")
def built(workspace):
    root, model, images = workspace
    cfg = load_config(model=model, calib_data=images, out=root / "out", imgsz=64, batch=4, calibrator="entropy2",
                      save_stats=root / "stats" / "seen.npz")
    return cfg, build(cfg)


def test_preset_is_packaged_once_and_overridable():
    assert preset_text() == (ROOT / "configs" / "yolov8.yaml").read_text()
    cfg = load_config(calibrator="percentile", percentile=99.9, imgsz="480,640")
    assert cfg.calibrator == "percentile" and cfg.imgsz == (480, 640) and cfg.precision == "int8"
    with pytest.raises(QuantError, match="unknown option 'colour'"):
        load_config(colour="red")


def test_build_writes_every_artifact_atomically(built, workspace):
    cfg, result = built
    root, model, _ = workspace
    out = cfg.out
    names = {p.name for p in out.iterdir()}
    assert names == {"calibration.cache", "calibration.cache.json", "calibration.trtexec.cache", "model.onnx",
                     "model.int8.onnx", "model.int8.ort.onnx", "model.int8.ov.onnx", "build.json"}  # no leftovers
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["model"]["sha256"] == sha256_file(model)
    assert manifest["calibrator"]["method"] == "entropy2" and manifest["calibration"]["images_used"] == 12
    assert set(manifest["trtexec"]) == {"tensorrt", "fp32", "fp16", "int8_cache", "int8_qdq"}
    assert manifest["packages"]["onnxruntime"] and manifest["timings"]["statistics"] > 0
    cache = read_cache(out / "calibration.cache")
    assert cache.header == "TRT-101300-EntropyCalibration2"
    assert manifest["amax"].keys() == cache.scales.keys() and "images" in cache.scales
    # the statistics file lets anyone recompute the thresholds
    stats = load_stats(root / "stats" / "seen.npz")
    recomputed = compute_all(stats, "entropy2")
    assert all(abs(recomputed[n] / 127 - cache.scales[n]) <= 1e-6 * cache.scales[n] + 1e-12 for n in cache.scales)
    assert result.summary()["artifacts"]["stats"] == str(root / "stats" / "seen.npz")


def test_cache_round_trips_through_modelopt_bit_exactly(built):
    from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache

    cfg, _ = built
    ours = read_cache(cfg.out / "calibration.cache").scales
    theirs = import_scales_from_calib_cache(str(cfg.out / "calibration.cache"))
    assert len(theirs) == len(ours)
    for name, scale in ours.items():
        assert struct.pack("!f", theirs[name + "_scale"]) == struct.pack("!f", scale)


def test_both_int8_models_run_in_onnxruntime_and_agree(built):
    cfg, result = built
    feeds = {"images": np.random.default_rng(3).random((2, 3, 64, 64), dtype=np.float32)}
    for name in ("model.int8.onnx", "model.int8.ort.onnx", "model.int8.ov.onnx"):
        (out,) = create_session(cfg.out / name).run(None, feeds)
        assert out.shape == (2, 8, 256) and np.isfinite(out).all()
    agreement = result.int8.agreement
    assert agreement["model"] == "model.int8.ort.onnx" and agreement["images"] >= 4
    assert agreement["cosine"] > 0.95, agreement
    assert result.int8.qdq["model.int8.ort.onnx"]["matched_scales"] == result.int8.qdq["model.int8.ort.onnx"][
        "activation_tensors"] > 10


def test_same_inputs_reuse_the_cache_and_another_calibrator_is_refused(built, tmp_path):
    cfg, first = built
    # the cache (and its provenance) moved elsewhere and passed with --calib-cache is reused in place
    elsewhere = tmp_path / "caches" / "yolo.cache"
    elsewhere.parent.mkdir()
    for suffix in ("", ".json"):
        shutil.copyfile(cfg.out / f"calibration.cache{suffix}", f"{elsewhere}{suffix}")
    again = build(cfg.model_copy(update={"save_stats": None, "calib_cache": elsewhere, "out": tmp_path / "o"}))
    assert again.int8.cache_reused and not first.int8.cache_reused
    assert again.artifacts["cache"] == elsewhere and not (tmp_path / "o" / "calibration.cache").exists()
    assert read_cache(elsewhere).scales == read_cache(cfg.out / "calibration.cache").scales
    before = {p.name: p.stat().st_mtime_ns for p in cfg.out.iterdir()}
    with pytest.raises(QuantError, match="another calibrator"):
        build(cfg.model_copy(update={"calibrator": "minmax", "save_stats": None}))
    assert {p.name: p.stat().st_mtime_ns for p in cfg.out.iterdir()} == before


def test_entropy2_thresholds_do_not_depend_on_batch_or_order(workspace):
    _, model, images = workspace
    amax = {}
    for batch, reverse in ((1, False), (4, False), (3, True)):
        calib = CalibrationSet.from_source(images, "images", (64, 64), batch)
        if reverse:
            calib.paths.reverse()
        with ActivationCollector(model) as collector:
            for feeds in calib.iter_batches(progress=False):
                collector.collect(feeds)
            amax[(batch, reverse)] = compute_all(collector.result(), "entropy2")
    base = amax[(1, False)]
    for other in amax.values():
        assert all(abs(other[n] - base[n]) <= 0.01 * base[n] for n in base)


def test_fp32_without_tensorrt_writes_only_the_manifest(workspace, tmp_path):
    _, model, _ = workspace
    result = build(load_config(model=model, precision="fp32", imgsz=64, out=tmp_path / "fp32",
                               backend="onnxruntime", simplify=True))
    assert set(result.artifacts) == {"simplified_model", "build_json"} and result.int8 is None
    assert result.summary()["calibrator"] is None
    manifest = json.loads(result.artifacts["build_json"].read_text())
    assert "--saveEngine=model.fp32.engine" in manifest["trtexec"]["fp32"]["command"]
    assert manifest["model"]["simplified"] and manifest["timings"]["simplify"] > 0


def test_simplify_publishes_the_model_the_artifacts_belong_to(workspace, tmp_path):
    """Regression (issue 8 item 6): build.json's trtexec lines named model.simplified.onnx, never published, and
    the cache's tensor names came from that unpublished graph."""
    import onnx

    _, model, images = workspace
    result = build(load_config(model=model, calib_data=images, imgsz=64, batch=4, out=tmp_path / "simp",
                               backend="onnxruntime", simplify=True, agreement_images=0))
    out = tmp_path / "simp"
    manifest = json.loads((out / "build.json").read_text())
    for key, line in manifest["trtexec"].items():
        if key == "tensorrt":
            continue
        onnx_name = next(p.split("=", 1)[1] for p in line["command"].split() if p.startswith("--onnx="))
        assert (out / onnx_name).is_file(), line
    assert manifest["model"]["quantized_model"] == "model.simplified.onnx" == result.artifacts["simplified_model"].name
    simplified = onnx.load(str(out / "model.simplified.onnx"))
    names = {i.name for i in simplified.graph.input} | {o for n in simplified.graph.node for o in n.output}
    assert set(read_cache(out / "calibration.cache").scales) <= names


def test_trained_yolov8n_acceptance(tmp_path):
    """The bundled trained detector (an Ultralytics opset-17 export) on 16 generated images."""
    if not BUNDLED_MODEL.is_file():
        pytest.skip(f"{BUNDLED_MODEL} is not in this checkout")
    from vision.data.synthetic import generate_calibration_images

    images = generate_calibration_images(tmp_path / "calib", 16, seed=1)
    result = build(load_config(model=BUNDLED_MODEL, calib_data=images, out=tmp_path / "out", agreement_images=8))
    assert {"cache", "qdq_trt", "qdq_ort", "qdq_ov", "build_json"} <= set(result.artifacts)
    agreement = result.int8.agreement
    assert agreement["cosine"] > 0.99, agreement
    assert agreement["detection_match"] is not None and agreement["detection_match"] > 0.9, agreement
    assert result.int8.qdq["model.int8.onnx"]["per_channel_weights"] >= 50
    assert result.int8.qdq["model.int8.onnx"]["onnxruntime_check"]["cosine"] > 0.99
    # the default target (TensorRT 10.13) builds the TensorRT layout strongly typed: its float parts are FP16
    # (TensorRT#993), checked with the FP16 tensors emulated in FP32 arithmetic (not ONNX Runtime's FP16 kernels)
    trt_layout = result.int8.qdq["model.int8.onnx"]
    assert trt_layout["target_high_precision"] == trt_layout["high_precision_dtype"] == "float16"
    assert trt_layout["onnxruntime_check"]["runtime"] == "onnxruntime[fp16 emulated]"
    assert trt_layout["onnxruntime_check"]["detection_match"] > 0.9
    ov = result.int8.qdq["model.int8.ov.onnx"]
    assert ov["layout"] == "openvino" and ov["per_channel_weights"] >= 50 and ov["matched_scales"] > 50
    if "skipped" not in ov["openvino_check"]:  # OpenVINO installed: the layout it runs agrees with FP32
        assert ov["openvino_check"]["runtime"] == "openvino" and ov["openvino_check"]["precision_hint"] == "f32"
        assert ov["openvino_check"]["detection_match"] > 0.9, ov["openvino_check"]


def test_input_size_and_batch_come_from_the_model_unless_dynamic(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from vision.model import inspect_model, resolve_batch, resolve_input_hw

    def info(shape):
        x = helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
        graph = helper.make_graph([helper.make_node("Relu", ["images"], ["y"])], "g", [x], [y])
        path = tmp_path / "m.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return inspect_model(onnx.load(str(path)), path)

    fixed = info([1, 3, 320, 480])
    assert resolve_input_hw(fixed, None) == (320, 480) and resolve_batch(fixed, None) == 1
    with pytest.raises(QuantError, match="fixed input size 320x480"):
        resolve_input_hw(fixed, (640, 640))
    with pytest.raises(QuantError, match="fixed batch size 1"):
        resolve_batch(fixed, 8)
    dynamic = info(["n", 3, "h", "w"])
    assert resolve_input_hw(dynamic, (640, 640)) == (640, 640) and resolve_batch(dynamic, None) == 8
    # without --imgsz: the model's Ultralytics imgsz metadata, else 640, and one line saying so
    notes: list[str] = []
    assert resolve_input_hw(dynamic, None, notes) == (640, 640)
    assert len(notes) == 1 and "640x640" in notes[0] and "--imgsz" in notes[0]
    recorded = inspect_model(_with_metadata(tmp_path / "m.onnx", imgsz="[320, 480]"), tmp_path / "m.onnx")
    assert resolve_input_hw(recorded, None, notes) == (320, 480) and "metadata" in notes[1]
    half_fixed = info(["n", 3, 256, "w"])
    assert resolve_input_hw(half_fixed, None) == (256, 640)


def _with_metadata(path, **props):
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, props)
    return model


def test_accuracy_budget_records_the_search_and_keeps_the_head_float(tmp_path):
    import onnx

    from tests.vision.eval_helpers import labelled_set
    from vision.graph import head_nodes

    model = tiny_detector_onnx(tmp_path)
    synthetic_images(tmp_path / "calib", 4)
    images, annotations = labelled_set(tmp_path / "val")
    (tmp_path / "map.json").write_text(json.dumps({"0": 3, "1": 7, "2": 11}))
    cfg = load_config(model=model, calib_data=tmp_path / "calib", out=tmp_path / "out", backend="onnxruntime",
                      accuracy_budget=100.0, data=images, annotations=annotations, agreement_images=0,
                      class_map=tmp_path / "map.json")
    result = build(cfg)
    manifest = json.loads((tmp_path / "out" / "build.json").read_text())
    mixed = manifest["mixed_precision"]
    assert mixed["met"] is True and mixed["budget"] == 100.0  # any drop is within 100 points: no search needed
    assert {"excluded_nodes", "map_fp32", "map_int8", "delta", "map_tensorrt_layout"} <= set(mixed)
    # each Δ with its paired 95 % interval over the budget images, which brackets it
    assert mixed["rule"] == "ci" and mixed["images"] == 2 and mixed["bootstrap"]["units"] == "images"
    for key in ("delta", "delta_tensorrt_layout"):
        lo, hi = mixed[f"{key}_ci95" if key != "delta" else "delta_map_ci95"]
        assert lo - 1e-6 <= mixed[key] <= hi + 1e-6
    assert mixed["float_regions"] == [] and mixed["regions"] and mixed["tensorrt"]["isolated_float_layers"] == []
    assert mixed["recommendation"]["within_budget"] and mixed["float_by_region"] == {"head": len(mixed["excluded_nodes"])}
    head = head_nodes(onnx.load(str(model)))
    assert head and mixed["excluded_nodes"] == head == manifest["float_layers"]
    assert result.summary()["mixed_precision"]["met"] is True
    for name in ("model.int8.onnx", "model.int8.ort.onnx", "model.int8.ov.onnx"):
        assert manifest["qdq"][name]["float_layers"] == len(head)
    assert not (tmp_path / "out" / "model.int8.mixed.ort.onnx").exists()


def test_calibration_stability_reports_amax_spread_over_subsets_without_changing_the_scales(workspace, built,
                                                                                            tmp_path):
    """--calib-stability: the same calibration on seeded half-subsets of the batches, each tensor's amax spread
    reported; the full calibration (and so the cache) is the one a plain build writes."""
    root, model, images = workspace
    cfg, _ = built
    stable_cfg = cfg.model_copy(update={"out": tmp_path / "out", "calib_stability": 4, "save_stats": None})
    result = build(stable_cfg)
    manifest = json.loads((tmp_path / "out" / "build.json").read_text())
    report = manifest["calibration"]["stability"]
    assert report == result.summary()["calib_stability"]
    assert 2 <= report["subsets"] <= 4 and all(0 < n <= 12 for n in report["subset_samples"])
    assert report["tensors"] > 10 and report["most_unstable"]
    worst = report["most_unstable"][0]
    assert worst["spread"] == report["max_spread"] and worst["low"] <= worst["high"]
    assert set(report["unstable"]) == {t["tensor"] for t in report["most_unstable"] if t["spread"] > 0.1} | \
        set(report["unstable"][len(report["most_unstable"]):])
    assert read_cache(tmp_path / "out" / "calibration.cache").scales == read_cache(cfg.out / "calibration.cache").scales
    with pytest.raises(QuantError, match="one calibration subset"):
        load_config(calib_stability=1)
