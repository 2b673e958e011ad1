"""Model-family presets: one YAML per family in configs/llm/, validated as :class:`llm_quant.config.Preset`.

Formats are data too, but live in ``quant_common.qformats``; a preset only names a model family's defaults.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from llm_quant.config import Preset
from llm_quant.upstream import refuse_unsupported
from quant_common.errors import QuantError

# configs/llm is the one source of truth; llm_quant/model/presets_yaml links to it so an installed wheel carries it too.
PRESET_DIR = Path(__file__).resolve().parent / "presets_yaml"


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_preset(path: Path) -> Preset:
    """Parse and validate one preset file (every section, ``triton:`` included) or raise one line."""
    try:
        data = yaml.safe_load(path.read_text())
        return Preset.model_validate(data)
    except Exception as exc:  # yaml or pydantic: keep one line
        first = " ".join(str(exc).split())[:300]
        raise QuantError(f"preset {path} is invalid: {first}", "fix the YAML") from exc


def load_preset(name: str) -> Preset:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise QuantError(f"unknown preset {name!r}", f"choose one of {', '.join(available_presets())}, "
                         "or pass a model folder / hub id")
    return read_preset(path)


def is_preset(name: str) -> bool:
    return (PRESET_DIR / f"{name}.yaml").is_file()


def preset_for_model_type(model_type: str) -> Preset:
    """The preset whose ``model_types`` lists this HF ``model_type`` (for --model given as a folder or hub id)."""
    refuse_unsupported(model_type)
    for name in available_presets():
        preset = load_preset(name)
        if model_type in preset.model_types:
            return preset
    supported = sorted({t for n in available_presets() for t in load_preset(n).model_types})
    raise QuantError(f"model_type {model_type!r} has no preset",
                     f"supported model types: {', '.join(supported)}; add a YAML under configs/llm/")
