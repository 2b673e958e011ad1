"""Engine/batching pairs the TensorRT-LLM executor refuses at load are refused (or flagged) when read here."""

from __future__ import annotations

import pytest
import yaml

from llm_quant.model import presets
from quant_common.errors import QuantError
from triton_backend import executor
from triton_backend.options import TritonOptions
from triton_backend.repository import RepositorySpec, package


def _preset_yaml(tmp_path, build: str, triton: str = ""):
    """The llama preset with some trtllm_build / triton options replaced."""
    path = tmp_path / "p.yaml"
    data = yaml.safe_load((presets.PRESET_DIR / "llama.yaml").read_text())
    data.setdefault("trtllm_build", {}).update(yaml.safe_load(build) or {})
    data.setdefault("triton", {}).update(yaml.safe_load(triton) or {})
    path.write_text(yaml.safe_dump(data))
    return path


def test_continuous_kv_cache_with_inflight_batching_is_refused_at_preset_load(tmp_path):
    with pytest.raises(QuantError, match="kv_cache_type continuous cannot be served with triton.batching_strategy "
                                         "inflight_fused_batching"):
        presets.read_preset(_preset_yaml(tmp_path, "kv_cache_type: continuous"))


def test_attention_plugin_off_with_inflight_batching_is_refused(tmp_path):
    with pytest.raises(QuantError, match="needs the GPT attention plugin"):
        presets.read_preset(_preset_yaml(tmp_path, "gpt_attention_plugin: disable"))


def test_disabled_kv_cache_and_paged_are_accepted(tmp_path):
    # ModelConfig::supportsInflightBatching accepts kPAGED and kDISABLED
    for kind in ("paged", "disabled"):
        assert presets.read_preset(_preset_yaml(tmp_path, f"kv_cache_type: {kind}")).trtllm_build.kv_cache_type == kind
    # static batching has no such constraint
    loaded = presets.read_preset(_preset_yaml(tmp_path, "kv_cache_type: continuous", "batching_strategy: V1"))
    assert loaded.triton.batching_strategy == "V1"


def test_v1_batching_is_flagged_when_packaged(tmp_path):
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text("{}")
    engine = tmp_path / "engine"
    engine.mkdir()
    spec = RepositorySpec(runtime="tensorrtllm", tokenizer_dir=tokenizer, engine_dir=engine,
                          options=TritonOptions(batching_strategy="V1"), planned_engine_limits=(100, 200))
    result = package(spec, tmp_path / "repo")
    assert any("Static batching type is deprecated" in w and "inflight_fused_batching" in w for w in result.warnings)
    spec.options = TritonOptions()
    assert not any("static batching" in w for w in package(spec, tmp_path / "repo2").warnings)


def test_executor_rules_cite_upstream():
    table = executor.table()
    for name in type(table).model_fields:
        assert getattr(table, name).source.repo in ("triton-inference-server/tensorrtllm_backend", "NVIDIA/TensorRT-LLM")
