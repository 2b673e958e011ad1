"""The packaged repository served by a real Triton (bundled 2.51, python backend): `detect` returns what
`predict` returns, bad requests get an error while the server keeps serving, concurrent requests batch correctly."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from quant_common.errors import QuantError
from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from triton_backend.server import TritonServer, free_port
from vision.backends.select import load_runner
from vision.config import load_config
from vision.data.synthetic import generate_dataset
from vision.evaluation.evaluate import evaluate, predict_images
from vision.pipeline.build import build
from vision.serving.client import DetectClient, detect_files
from vision.serving.evaluate import evaluate_served
from vision.serving.repository import ServingOptions, package

EXE = Path(sys.executable).with_name("vision-quant")


def _reference(vision_build, images, **options):
    with load_runner(vision_build / "model.int8.ort.onnx") as runner:
        return [d for _, d in predict_images(runner, list(images), conf=options.get("conf", 0.25),
                                            iou=options.get("iou", 0.7), max_det=300,
                                            multi_label=options.get("multi_label", False))]


def _assert_same(expected, got):
    assert len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        assert len(a) == len(b)
        np.testing.assert_allclose(b.boxes, a.boxes, atol=1e-3)
        np.testing.assert_array_equal(b.classes, a.classes)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_detections_equal_in_process_predict(vision_server, vision_build, test_images, protocol):
    url = vision_server.http_url if protocol == "http" else vision_server.grpc_url
    client = DetectClient(url, protocol=protocol)
    got = [client.detect(p.read_bytes()) for p in test_images]
    expected = _reference(vision_build, test_images)
    assert sum(len(d) for d in expected) > 0, "the test needs images with detections"
    _assert_same(expected, got)
    # per-request options reach the postprocess model: mAP-style settings give the eval's candidates
    loose = [client.detect(p.read_bytes(), conf=0.001, multi_label=True) for p in test_images[:2]]
    _assert_same(_reference(vision_build, test_images[:2], conf=0.001, multi_label=True), loose)


def test_a_batched_request_pads_and_counts_each_image(vision_server, vision_build, test_images):
    client = DetectClient(vision_server.http_url)
    got = client.detect_batch([p.read_bytes() for p in test_images])
    _assert_same(_reference(vision_build, test_images), got)


def test_concurrent_clients_are_batched_without_mixing_results(vision_server, vision_build, test_images):
    expected = _reference(vision_build, test_images)

    def worker(index):
        client = DetectClient(vision_server.grpc_url, protocol="grpc")
        order = [(index + k) % len(test_images) for k in range(6)]
        return order, [client.detect(test_images[i].read_bytes()) for i in order]

    with ThreadPoolExecutor(8) as pool:
        for order, results in pool.map(worker, range(8)):
            _assert_same([expected[i] for i in order], results)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("payload, message", [
    (b"this is not an image", "cannot decode the image"),
    (b"", "empty"),
    ("huge", "over the"),
])
def test_bad_images_get_an_error_and_the_server_keeps_serving(vision_server, vision_build, test_images, payload,
                                                             message):
    client = DetectClient(vision_server.http_url)
    data = _png(Image.new("1", (10000, 10000))) if payload == "huge" else payload
    with pytest.raises(QuantError, match=message):
        client.detect(data)
    assert vision_server.alive()
    _assert_same(_reference(vision_build, test_images[:1]), [client.detect(test_images[0].read_bytes())])


def test_wrong_dtype_empty_batch_and_unknown_model_are_refused(vision_server, test_images):
    import tritonclient.http as httpclient

    client = DetectClient(vision_server.http_url)
    wrong = httpclient.InferInput("image", [1, 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 1), np.float32))
    with pytest.raises(QuantError, match="refused"):
        client.infer_raw([wrong])
    empty = httpclient.InferInput("image", [0, 1], "BYTES")
    empty.set_data_from_numpy(np.empty((0, 1), dtype=object))
    with pytest.raises(QuantError, match="refused"):
        client.infer_raw([empty])
    with pytest.raises(QuantError, match="refused"):
        DetectClient(vision_server.http_url, model="nope").detect(test_images[0].read_bytes())
    assert client.detect(test_images[0].read_bytes()) is not None


def test_cli_detect_json_matches_predict_json(vision_server, vision_build, test_images, tmp_path):
    images = [str(p) for p in test_images]
    predicted = subprocess.run([str(EXE), "predict", str(vision_build / "model.int8.ort.onnx"), *images, "--json"],
                               capture_output=True, text=True, check=True, timeout=300)
    detected = subprocess.run([str(EXE), "detect", *images, "--url", vision_server.grpc_url, "--protocol", "grpc",
                               "--json", "--save", str(tmp_path / "drawn")],
                              capture_output=True, text=True, check=False, timeout=300)
    assert detected.returncode == 0, detected.stderr
    expected, got = json.loads(predicted.stdout)["images"], json.loads(detected.stdout)["images"]
    assert [r["image"] for r in got] == images
    for want, have in zip(expected, got, strict=True):
        assert [(d["class"], d["name"]) for d in have["detections"]] == [(d["class"], d["name"])
                                                                         for d in want["detections"]]
        for a, b in zip(want["detections"], have["detections"], strict=True):
            np.testing.assert_allclose(b["box_xyxy"], a["box_xyxy"], atol=0.011)  # both rounded to 0.01
        assert Path(have["saved"]).is_file()
    table = subprocess.run([str(EXE), "detect", images[0], "--url", vision_server.http_url],
                           capture_output=True, text=True, check=True, timeout=120)
    assert Path(images[0]).name in table.stdout


def test_detect_files_rejects_a_missing_image(vision_server, tmp_path):
    with pytest.raises(QuantError, match="cannot read image"):
        detect_files(DetectClient(vision_server.http_url), [tmp_path / "missing.jpg"])


def test_map_through_the_server_equals_eval_of_the_same_artifact(vision_server, vision_build, tmp_path):
    annotations = generate_dataset(tmp_path / "set", 6, seed=3, imgsz=96, workers=1)
    images = tmp_path / "set" / "images" / "val"
    class_map = tmp_path / "classes.json"
    class_map.write_text("[1, 2, 3, 4]")  # the tiny detector has 4 classes; the generated set has 8 categories
    with load_runner(vision_build / "model.int8.ort.onnx") as runner:
        expected = evaluate(runner, images, annotations, class_map=class_map)
    got = evaluate_served(DetectClient(vision_server.http_url), images, annotations, class_map=class_map)
    assert expected.detections > 0 and got.detections == expected.detections
    assert got.map50_95 == pytest.approx(expected.map50_95, abs=1e-9)
    assert got.map50 == pytest.approx(expected.map50, abs=1e-9)
    assert [c.map50_95 for c in got.per_class] == pytest.approx([c.map50_95 for c in expected.per_class], abs=1e-9)


@pytest.fixture(scope="module")
def fixed_batch_build(tmp_path_factory):
    # Ultralytics' default export: batch fixed at 1, so the detector cuts Triton's batches into single images
    root = tmp_path_factory.mktemp("fixed-batch")
    model = tiny_detector_onnx(root, dynamic_batch=False, seed=5)
    synthetic_images(root / "calib", 4)
    build(load_config(model=model, calib_data=root / "calib", out=root / "build", imgsz=64, agreement_images=0))
    return root / "build"


def test_a_fixed_batch_model_serves_concurrent_and_batched_requests(fixed_batch_build, test_images):
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the bundled Triton server) is not installed")
    repo = package(fixed_batch_build, fixed_batch_build.parent / "repo", ServingOptions(max_batch_size=4)).path
    expected = _reference(fixed_batch_build, test_images)
    with TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()) as server:
        # a 4-image request (the max batch) is cut into the model's batch of 1 and put back together in order
        _assert_same(expected, DetectClient(server.http_url).detect_batch([p.read_bytes() for p in test_images]))

        def worker(index):
            client = DetectClient(server.grpc_url, protocol="grpc")
            return [client.detect(test_images[(index + k) % len(test_images)].read_bytes()) for k in range(4)]

        with ThreadPoolExecutor(6) as pool:
            for index, results in enumerate(pool.map(worker, range(6))):
                _assert_same([expected[(index + k) % len(expected)] for k in range(4)], results)


def test_cli_serve_starts_answers_and_stops_on_sigterm(vision_repo, vision_build, test_images):
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the bundled Triton server) is not installed")
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen([str(EXE), "serve", str(vision_repo), "--http-port", ports[0], "--grpc-port", ports[1],
                             "--metrics-port", ports[2], "--log-file", str(vision_repo.parent / "serve.log")],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith(("ready:", "error:")):
                break
        assert lines[-1].startswith("ready:"), "".join(lines)
        _assert_same(_reference(vision_build, test_images[:1]),
                     [DetectClient(f"127.0.0.1:{ports[0]}").detect(test_images[0].read_bytes())])
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0 and "stopped" in rest
