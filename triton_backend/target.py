"""Which TensorRT-LLM backend version a repository is rendered for.

Order: the TensorRT-LLM installed here (its package metadata; nothing is imported), else the ``version`` that
trtllm-build wrote into the engine's ``config.json``, else ``--trtllm-version``, else the newest family in the table
(TensorRT-LLM's in-tree backend, 0.20 and later). A ``--trtllm-version`` that contradicts what was detected is
refused: the repository would not load on one of the two.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError
from triton_backend.interface import default_family, family_for_version


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    trtllm_version: str | None
    reason: str


def installed_trtllm() -> str | None:
    for dist in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def engine_trtllm(engine_dir: Path | None) -> str | None:
    """The TensorRT-LLM version trtllm-build recorded in ``engine_dir/config.json`` (top-level ``version``)."""
    if engine_dir is None or not (engine_dir / "config.json").is_file():
        return None
    try:
        version = json.loads((engine_dir / "config.json").read_text(encoding="utf-8")).get("version")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return version if isinstance(version, str) and version else None


def choose_target(requested: str | None = None, engine_dir: Path | None = None) -> Target:
    detected: tuple[str, str] | None = None
    if (version := installed_trtllm()) is not None:
        detected = (version, "installed tensorrt_llm")
    elif (version := engine_trtllm(engine_dir)) is not None:
        detected = (version, f"engine {engine_dir}/config.json")
    if detected is not None:
        fam = family_for_version(detected[0])
        if requested is not None and family_for_version(requested).name != fam.name:
            raise QuantError(f"--trtllm-version {requested} contradicts TensorRT-LLM {detected[0]} ({detected[1]})",
                             "drop --trtllm-version or build with the TensorRT-LLM you will serve with")
        return Target(family=fam.name, trtllm_version=detected[0], reason=detected[1])
    if requested is not None:
        return Target(family=family_for_version(requested).name, trtllm_version=requested,
                      reason="--trtllm-version")
    fam = default_family()
    return Target(family=fam.name, trtllm_version=None,
                  reason=f"default (no TensorRT-LLM installed or recorded): the newest family, {fam.name}")
