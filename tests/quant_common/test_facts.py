"""Fact tables: rows carry their upstream source; bad tables fail validation."""

from __future__ import annotations

import pydantic
import pytest

from quant_common.facts import Fact, Source


def test_source_cites_tag_or_commit():
    tagged = Source(repo="NVIDIA/TensorRT", path="python/src/infer/pyCore.cpp", tag="v10.13.3", line="120")
    assert tagged.cite() == "NVIDIA/TensorRT@v10.13.3/python/src/infer/pyCore.cpp:120"
    unpinned = Source(repo="NVIDIA/TensorRT-LLM", path="triton_backend/x.cc", commit="0c8de69a1234567", pinned=False)
    assert unpinned.cite() == "NVIDIA/TensorRT-LLM@0c8de69a1234/triton_backend/x.cc (not tag-pinned)"


def test_rows_refuse_unknown_keys():
    with pytest.raises(pydantic.ValidationError):
        Fact.model_validate({"source": {"repo": "a/b", "path": "p"}, "typo": 1})
    with pytest.raises(pydantic.ValidationError):
        Fact.model_validate({})
