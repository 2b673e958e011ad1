"""TensorRT-LLM facts as data (``trtllm_build.yaml``): trtllm-build flags, paged context FMHA rules, QuantAlgo names;
``modelopt_export.yaml`` (what modelopt's export refuses and renames) and ``trtllm_smoothquant.yaml``
(``llm_quant.upstream.smoothquant``). The lowest stage of ``llm_quant``: every stage may read these tables.

Each row names the upstream repository, path and tag/commit it was read from (``quant_common.facts.Source``).
The engine step renders its argv from these rows only; tests check the rendered argv against them per release.

Target release: the installed TensorRT-LLM, else the ``version`` in an existing engine's ``config.json``, else
``--trtllm-version``. With none of them the argv is the one every release in the table accepts (the strictest rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from llm_quant.upstream import smoothquant
from quant_common import qformats
from quant_common.errors import QuantError
from quant_common.facts import Fact, Source, load_table

TABLE = "trtllm_build.yaml"


def version_key(version: str) -> tuple[int, int, int]:
    """``"0.17.0.dev2024121700"`` → (0, 17, 0); ``"1.2.0rc8"`` → (1, 2, 0)."""
    parts = []
    for part in str(version).strip().split(".")[:3]:
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    if not parts:
        raise QuantError(f"'{version}' is not a TensorRT-LLM version", "pass e.g. --trtllm-version 1.2.0")
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


class Release(Fact):
    name: str
    min: str  # inclusive
    max: str  # exclusive

    def contains(self, version: str) -> bool:
        return version_key(self.min) <= version_key(version) < version_key(self.max)


class Flag(Fact):
    name: str
    values: list[str] | None = None  # None: any value of the flag's type
    releases: list[str]


class PagedContextFmha(Fact):
    release: str
    int8_kv: bool  # allowed with an INT8 KV cache
    fp8_kv_quant_algos: list[str]  # quant_algo values with which an FP8 KV cache allows it
    violation: Literal["error", "disabled_with_warning"]

    def allows(self, quant_algo: str | None, kv_cache_quant_algo: str | None) -> bool:
        if kv_cache_quant_algo == "INT8":
            return self.int8_kv
        if kv_cache_quant_algo == "FP8":
            return quant_algo in self.fp8_kv_quant_algos
        return True


class QuantAlgos(Fact):
    release: str
    quant_algo: list[str]
    kv_cache_quant_algo: list[str]


class Int4GroupSizes(Fact):
    quant_algos: list[str]
    group_sizes: list[int]  # largest first


class TrtllmFacts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    releases: list[Release]
    flags: list[Flag]
    paged_context_fmha: list[PagedContextFmha]
    quant_algos: list[QuantAlgos]
    int4_group_sizes: list[Int4GroupSizes]

    def group_sizes_for(self, quant_algo: str) -> tuple[int, ...]:
        for row in self.int4_group_sizes:
            if quant_algo in row.quant_algos:
                return tuple(row.group_sizes)
        raise KeyError(f"INT4 group sizes of {quant_algo} are not in {TABLE}")

    def release_for(self, version: str) -> Release:
        for release in self.releases:
            if release.contains(version):
                return release
        known = ", ".join(f"{r.min}..<{r.max}" for r in self.releases)
        raise QuantError(f"TensorRT-LLM {version} is outside the releases this tool was checked against ({known})",
                         "install a TensorRT-LLM in that range or pass a matching --trtllm-version")

    def flag(self, name: str, release: str | None) -> Flag:
        rows = [f for f in self.flags if f.name == name and (release is None or release in f.releases)]
        if not rows:
            raise KeyError(f"trtllm-build flag {name} is not in {TABLE} for release {release}")
        return rows[0]

    def paged_context_fmha_rules(self, release: str | None) -> list[PagedContextFmha]:
        """The rule of ``release``; every release's rule when the target is unknown."""
        return [r for r in self.paged_context_fmha if release is None or r.release == release]


class RefusedModelType(Fact):
    model_type: str
    reason: str
    fix: str


class TrtllmLinearName(Fact):
    hf: str  # suffix of the HF module name inside a decoder layer (self_attn.q_proj)
    trtllm: str  # the TensorRT-LLM module it is stored in (attention.qkv)
    group: str  # linears TensorRT-LLM runs as one GEMM: one precision for all of them


class ExcludeModulesMatching(Fact):
    matcher: Literal["fnmatchcase"]
    module_prefix: str
    ignored_by_quant_algos: list[str]
    ignored_source: Source


class ModeloptExportFacts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    refused_model_types: list[RefusedModelType]
    trtllm_linear_names: list[TrtllmLinearName]
    exclude_modules_matching: ExcludeModulesMatching


def modelopt_export_facts() -> ModeloptExportFacts:
    return load_table("llm_quant.upstream", "modelopt_export.yaml", ModeloptExportFacts)


def refuse_unsupported(model_type: str) -> None:
    """One line for an HF model type the TensorRT-LLM checkpoint export cannot take (``modelopt_export.yaml``)."""
    table = load_table("llm_quant.upstream", "modelopt_export.yaml", ModeloptExportFacts)
    for row in table.refused_model_types:
        if row.model_type == model_type:
            raise QuantError(f"model_type {model_type!r} is not supported: {' '.join(row.reason.split())}", row.fix)


def trtllm_facts() -> TrtllmFacts:
    return load_table("llm_quant.upstream", TABLE, TrtllmFacts)


def expected_algorithms(qformat_name: str, kv_cache_dtype: str | None, sq_activations: str = "per_tensor"
                        ) -> tuple[str | None, str | None]:
    """(quant_algo, kv_cache_quant_algo) the exported TensorRT-LLM checkpoint must declare: the qformat row's,
    except per-token SmoothQuant, whose plugin quant_algo is read from ``trtllm_smoothquant.yaml``."""
    kv = qformats.kv_format(kv_cache_dtype).kv_cache_quant_algo if kv_cache_dtype else None
    row = qformats.qformat(qformat_name)
    if row.smoothquant and sq_activations == "per_token":
        return smoothquant.quant_algo(), kv
    return row.quant_algo, kv


def engine_config_version(engine_dir: Path) -> str | None:
    """The TensorRT-LLM version recorded in an engine's ``config.json`` (None when absent or unreadable)."""
    try:
        value = json.loads((engine_dir / "config.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value else None


def target_version(installed: str | None, engine_dir: Path | None, requested: str | None) -> tuple[str | None, str]:
    """(version, where it came from): installed TensorRT-LLM, else the engine's config.json, else the request."""
    if installed is not None:
        if requested is not None and version_key(requested)[:2] != version_key(installed)[:2]:
            raise QuantError(f"--trtllm-version {requested} differs from the installed TensorRT-LLM {installed}",
                             "drop --trtllm-version (the installed one builds the engine)")
        return installed, "installed"
    recorded = engine_config_version(engine_dir) if engine_dir is not None else None
    if recorded is not None:
        return recorded, "engine config.json"
    if requested is not None:
        version_key(requested)
        return requested, "--trtllm-version"
    return None, "none given: the argv every release in the table accepts"
