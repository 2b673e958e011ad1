"""Shared fixtures: one tiny quantized build per session (~20 s on 2 cores), packaged for Triton."""

from __future__ import annotations

import pytest

from llm_quant.tiny import tiny_build as make_tiny_build
from triton_backend.repository import package_for_build


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory):
    pytest.importorskip("modelopt.torch.quantization")
    return make_tiny_build(tmp_path_factory.mktemp("tiny-build"))


@pytest.fixture(scope="session")
def tiny_repo(tiny_build):
    return package_for_build(tiny_build).path
