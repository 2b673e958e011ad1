"""Shared fixtures: one tiny quantized build per session (~20 s on 2 cores), packaged for Triton."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    pytest.importorskip("modelopt.torch.quantization")
    from tests.triton_backend.tiny_model import build_tiny_build

    return build_tiny_build(tmp_path_factory.mktemp("tiny-build"))


@pytest.fixture(scope="session")
def tiny_repo(tiny_build):
    from triton_backend.repository import package_for_build

    return package_for_build(tiny_build).path
