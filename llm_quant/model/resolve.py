"""Resolve ``--model`` to a local Hugging Face folder: a preset name, a local folder, or a hub id.

A preset's packaged default (``package:...gguf``) is converted once into a cached HF folder by
``llm_quant.model.gguf``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from llm_quant.model.gguf import convert_packaged_gguf
from quant_common.errors import QuantError, require

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # a local HF folder with config.json + tokenizer
    source: str  # what the user asked for, resolved (package:file, hub id or folder)


def check_hf_folder(path: Path) -> Path:
    """A usable HF folder has config.json, weights and a tokenizer; say which is missing."""
    if not path.is_dir():
        raise QuantError(f"model folder {path} does not exist", "pass an existing Hugging Face model folder")
    if not (path / "config.json").is_file():
        raise QuantError(f"model folder {path} has no config.json",
                         "pass a Hugging Face checkpoint folder (save_pretrained output)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise QuantError(f"model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                         "save the tokenizer into the folder (tokenizer.save_pretrained)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise QuantError(f"model folder {path} has no weights (*.safetensors)",
                         "save the model with save_pretrained(safe_serialization=True)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise QuantError(f"{path / 'config.json'} is not valid JSON: {exc}", "re-save the model") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise QuantError(f"{path / 'config.json'} has no model_type", "re-save the model with save_pretrained")
    return path


def resolve_model(spec: str, *, default_source: str | None = None) -> ResolvedModel:
    """``spec`` is a local folder, a hub id, or a preset's source string (``package:relative/file.gguf``)."""
    source = default_source or spec
    if source.startswith("package:"):
        return ResolvedModel(convert_packaged_gguf(source), source)
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")):
        return ResolvedModel(check_hf_folder(path.resolve()), str(path.resolve()))
    if HUB_ID.match(source):
        return ResolvedModel(download_hub_model(source), source)
    raise QuantError(f"unknown model {spec!r}: not a preset, a local folder or a Hugging Face hub id",
                     "pass a preset name (llm-quant build --help lists them), a model folder or org/name")


def download_hub_model(repo_id: str) -> Path:
    hub = require("huggingface_hub", purpose="downloading a model from the Hugging Face hub")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        try:
            return check_hf_folder(Path(hub.snapshot_download(repo_id, local_files_only=True)))
        except Exception as exc:  # noqa: BLE001 - any miss in the local hub cache is the same user error
            raise QuantError(f"hub model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE is set",
                             "download it first, or pass a local model folder") from exc
    try:
        folder = hub.snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as exc:  # noqa: BLE001 - network, auth and not-found all end the same way for users
        kind = exc.__class__.__name__
        raise QuantError(f"cannot download hub model {repo_id!r} ({kind}: {str(exc).splitlines()[0][:160]})",
                         "check the id and network access (HF_TOKEN for gated models), or pass a local folder"
                         ) from exc
    return check_hf_folder(Path(folder))
