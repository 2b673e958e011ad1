"""Shared fixtures: one tiny INT8 vision build per session (real `vision-quant build` pipeline), its repository,
and a real Triton server (nvidia-pytriton's bundled 2.51) serving it."""

from __future__ import annotations

import pytest

from tests.vision.conftest import synthetic_images, tiny_detector_onnx
from triton_backend.server import TritonServer, free_port
from vision.config import load_config
from vision.pipeline.build import build
from vision.serving.repository import package


@pytest.fixture(scope="session")
def vision_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-build")
    model = tiny_detector_onnx(root, dynamic_batch=True)
    synthetic_images(root / "calib", 8)
    cfg = load_config(model=model, calib_data=root / "calib", out=root / "build", imgsz=64, batch=4,
                      agreement_images=0)
    build(cfg)
    return root / "build"


@pytest.fixture(scope="session")
def test_images(tmp_path_factory):
    # several sizes and aspect ratios, so the letterbox mapping is exercised both ways
    root = tmp_path_factory.mktemp("vision-images")
    paths = synthetic_images(root / "a", 2, size=(80, 96), seed=1)
    paths += synthetic_images(root / "b", 2, size=(150, 50), seed=2)
    return paths


@pytest.fixture(scope="session")
def vision_repo(vision_build, tmp_path_factory):
    return package(vision_build, tmp_path_factory.mktemp("vision-repo") / "repo").path


@pytest.fixture(scope="session")
def vision_server(vision_repo):
    pytest.importorskip("pytriton", reason="nvidia-pytriton (the bundled Triton server) is not installed")
    server = TritonServer(vision_repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          ready_timeout_s=180)
    with server:
        yield server
