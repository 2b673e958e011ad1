"""`vision-quant package`: the repository's configs parse as Triton ModelConfigs, agree with each other across the
ensemble, follow the cited backend table, and are written atomically."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quant_common.errors import QuantError
from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from triton_backend import config_pbtxt
from triton_backend.server import check_repository
from vision.config import load_config
from vision.pipeline.build import build
from vision.serving.configs import detector_table
from vision.serving.repository import ENSEMBLE, ServingOptions, package

EXE = Path(sys.executable).with_name("vision-quant")


def _configs(repo: Path) -> dict[str, object]:
    return {name: config_pbtxt.load(repo / name / "config.pbtxt") for name in check_repository(repo)}


def test_repository_has_the_four_models_each_valid(vision_repo):
    configs = _configs(vision_repo)
    assert sorted(configs) == sorted(["preprocess", "detector", "postprocess", ENSEMBLE])
    for name in ("preprocess", "detector", "postprocess"):
        assert (vision_repo / name / "1" / "model.py").is_file()
        assert configs[name].backend == "python"
    assert configs[ENSEMBLE].platform == "ensemble"
    detector = configs["detector"]
    assert detector.dynamic_batching.preferred_batch_size and detector.max_batch_size >= 1
    assert (vision_repo / "detector" / "1" / config_pbtxt.parameters_of(detector)["model_file"]).is_file()
    manifest = json.loads((vision_repo / "repository.json").read_text())
    assert manifest["detector"] == "python" and manifest["models"] == ["preprocess", "detector", "postprocess",
                                                                         ENSEMBLE]


def test_ensemble_wiring_matches_each_step_model(vision_repo):
    configs = _configs(vision_repo)
    ensemble = configs[ENSEMBLE]
    produced = {t.name: t.data_type for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        assert model.max_batch_size >= ensemble.max_batch_size
        for key, value in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert produced[value] == inputs[key].data_type, (step.model_name, key)
        for key, value in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            produced[value] = outputs[key].data_type
    for tensor in ensemble.output:
        assert produced[tensor.name] == tensor.data_type


@pytest.mark.parametrize("kind", ["onnxruntime", "onnxruntime_trt", "openvino", "tensorrt"])
def test_backend_detectors_follow_the_cited_table(vision_build, tmp_path, kind):
    build = tmp_path / "build"
    shutil.copytree(vision_build, build)
    if kind == "tensorrt":
        # Stands in for `vision-quant build --backend tensorrt`'s engine (TensorRT cannot run here); packaging only
        # copies the file, and the config is what this test checks.
        (build / "model.int8.engine").write_bytes(b"engine bytes")
    result = package(build, tmp_path / "repo", ServingOptions(detector=kind, max_batch_size=16, instances=2))
    fact = detector_table().detectors[kind]
    config = config_pbtxt.load(result.path / "detector" / "config.pbtxt")
    assert (config.platform or None) == fact.platform and (config.backend or None) == fact.backend
    assert (result.path / "detector" / "1" / fact.model_file).is_file()
    assert not (result.path / "detector" / "1" / "model.py").exists()
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, _kind_enum(fact.instance_kind))]
    assert config_pbtxt.parameters_of(config) == fact.parameters
    assert config.default_model_filename == (fact.default_model_filename or "")
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    if fact.gpu_execution_accelerator is None:
        assert len(accelerators) == 0
    else:
        assert accelerators[0].name == fact.gpu_execution_accelerator.name
        assert dict(accelerators[0].parameters) == fact.gpu_execution_accelerator.parameters
    # the ensemble and the python pre/post models are the same whatever runs the detector
    assert config_pbtxt.load(result.path / ENSEMBLE / "config.pbtxt").platform == "ensemble"


def _kind_enum(name: str) -> int:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelInstanceGroup.Kind.Value(name)


def test_fact_table_rows_cite_their_source():
    table = detector_table()
    assert {"tensorrt", "onnxruntime", "openvino"} <= set(table.detectors)
    for fact in table.detectors.values():
        assert fact.source.repo.startswith("triton-inference-server/") and fact.source.tag and fact.source.line
        assert bool(fact.platform) != bool(fact.backend)
    assert table.detectors["tensorrt"].platform == "tensorrt_plan"
    assert table.detectors["onnxruntime"].platform == "onnxruntime_onnx"


def test_tensorrt_detector_without_an_engine_is_one_clear_error(vision_build, tmp_path):
    with pytest.raises(QuantError, match="no TensorRT engine"):
        package(vision_build, tmp_path / "repo", ServingOptions(detector="tensorrt"))
    assert not (tmp_path / "repo").exists()


def test_backend_detectors_refuse_a_fixed_batch_model(tmp_path):
    model = tiny_detector_onnx(tmp_path, dynamic_batch=False)
    synthetic_images(tmp_path / "calib", 4)
    build(load_config(model=model, calib_data=tmp_path / "calib", out=tmp_path / "build", imgsz=64,
                      agreement_images=0))
    with pytest.raises(QuantError, match="fixed batch size of 1"):
        package(tmp_path / "build", tmp_path / "repo", ServingOptions(detector="onnxruntime"))
    # the python detector runs it, cutting Triton's batches into the model's batch
    assert package(tmp_path / "build", tmp_path / "repo").max_batch_size == 8


def test_repackaging_replaces_the_repository_whole(vision_build, tmp_path):
    out = tmp_path / "repo"
    package(vision_build, out, ServingOptions(max_batch_size=4))
    (out / "stray").mkdir()
    package(vision_build, out, ServingOptions(max_batch_size=2))
    assert not (out / "stray").exists()
    assert config_pbtxt.load(out / "detector" / "config.pbtxt").max_batch_size == 2
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left behind


@pytest.mark.parametrize("args, message", [
    (["package", "{missing}"], "not a vision-quant build output"),
    (["package", "{build}", "--detector", "tflite"], "unknown detector"),
    (["package", "{build}", "--runner-backend", "tflite"], "unknown runner backend"),
    (["detect", "--data", "{build}"], "needs both --data DIR and --annotations FILE"),
    (["detect", "--url", "127.0.0.1:9"], "no images given"),
    (["detect", "{image}", "--url", "127.0.0.1:9"], "cannot reach Triton"),
    (["detect", "{image}", "--protocol", "udp"], "unknown protocol"),
])
def test_cli_errors_are_one_line(vision_build, test_images, tmp_path, args, message):
    filled = [a.format(missing=tmp_path / "nope", build=vision_build, image=test_images[0]) for a in args]
    proc = subprocess.run([str(EXE), *filled], capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
