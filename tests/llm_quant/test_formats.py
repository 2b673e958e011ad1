"""The format table: its rows name real modelopt configs, and everything else is derived from it."""

from __future__ import annotations

import typing

import pytest
from pydantic import ValidationError

from llm_quant.calibration import calibrate
from llm_quant.cli import build
from llm_quant.config import BuildConfig, KVCacheDType, QFormat
from llm_quant.export import verify
from llm_quant.model.presets import load_preset
from llm_quant.upstream import expected_algorithms
from quant_common import qformats
from quant_common.errors import QuantError


def test_rows_are_unique_and_consistent():
    assert len(qformats.QFORMATS) == len(qformats.QFORMAT_ROWS) and len(qformats.KV_FORMATS) == len(qformats.KV_ROWS)
    for row in qformats.QFORMAT_ROWS:
        assert (row.modelopt_cfg is None) == (row.quant_algo is None), row.name  # quantized <=> exported algo
        if row.checkpoint is not None:
            assert qformats.CHECKPOINT_TENSORS[row.quant_algo] == row.checkpoint
    # quant_algos that modelopt writes for CPU formats are all checked in the exported checkpoint
    assert {r.quant_algo for r in qformats.QFORMAT_ROWS if r.quantized and not r.needs_cuda} <= set(
        qformats.CHECKPOINT_TENSORS)


def test_every_row_names_a_config_of_the_installed_modelopt():
    """Each row's config exists in the installed modelopt, or the format is refused in one line naming the version
    (nvidia-modelopt 0.37, TensorRT-LLM 1.2's pin, has no INT8_WEIGHT_ONLY_CFG)."""
    mtq = pytest.importorskip("modelopt.torch.quantization")
    for row in qformats.QFORMAT_ROWS:
        if row.modelopt_cfg and not hasattr(mtq, row.modelopt_cfg):
            with pytest.raises(QuantError, match=f"needs modelopt's {row.modelopt_cfg}, which nvidia-modelopt"):
                calibrate.modelopt_config(row.name)
            continue
        assert row.modelopt_cfg is None or isinstance(getattr(mtq, row.modelopt_cfg), dict), row.name
    for name in [r.modelopt_cfg for r in qformats.KV_ROWS if r.modelopt_cfg]:
        assert isinstance(getattr(mtq, name, None), dict), name


def test_config_types_and_cli_help_derive_from_the_table():
    assert typing.get_args(QFormat) == qformats.QFORMAT_NAMES
    assert typing.get_args(KVCacheDType) == qformats.KV_NAMES
    assert qformats.qformat_help() == "int8_sq, fp8, int4_awq, w4a8_awq, int8_wo, int4_wo, nvfp4 (GPU), full_prec"
    assert qformats.kv_help() == "fp8 or int8 KV cache"
    assert build._QFORMAT.help == qformats.qformat_help() and build._KV.help == qformats.kv_help()
    preset = load_preset("llama")
    base = {"preset": preset, "calibration": preset.calibration, "eval": preset.eval, "parallel": preset.parallel,
            "dtype": "float16"}
    for name in qformats.QFORMAT_NAMES:
        assert BuildConfig(**base, qformat=name).qformat == name
    with pytest.raises(ValidationError, match="int8_sq"):
        BuildConfig(**base, qformat="int3")
    with pytest.raises(ValidationError):
        BuildConfig(**base, kv_cache_dtype="fp4")
    assert verify.CHECKPOINT_TENSORS is qformats.CHECKPOINT_TENSORS


def test_lookups_fail_with_the_choices():
    with pytest.raises(QuantError, match="unknown qformat 'int3' — choose one of int8_sq, fp8, .*full_prec"):
        qformats.qformat("int3")
    with pytest.raises(QuantError, match="unknown --kv-cache-dtype 'fp4' — choose fp8 or int8"):
        qformats.kv_format("fp4")
    assert expected_algorithms("int8_sq", None) == ("W8A8_SQ_PER_CHANNEL", None)
    assert expected_algorithms("fp8", "fp8") == ("FP8", "FP8")
    assert expected_algorithms("int4_wo", "int8") == ("W4A16_AWQ", "INT8")
    assert qformats.either(["a"]) == "a" and qformats.either(["a", "b", "c"]) == "a, b or c"


def test_modelopt_config_from_the_rows():
    pytest.importorskip("modelopt.torch.quantization")
    assert calibrate.modelopt_config("full_prec") is None
    with pytest.raises(QuantError, match="needs a quantized --qformat"):
        calibrate.modelopt_config("full_prec", kv_cache_dtype="fp8")
    with pytest.raises(QuantError, match="applies to --qformat int8_sq only"):
        calibrate.modelopt_config("fp8", smoothquant_alpha=0.5)
    sq = calibrate.modelopt_config("int8_sq", smoothquant_alpha=0.6, exclude_layers=["model.layers.3"])
    assert sq["algorithm"] == {"method": "smoothquant", "alpha": 0.6}
    assert calibrate.quant_cfg_entries(sq)[-1] == ("*model.layers.3.*", {"enable": False})
    plain = calibrate.quant_cfg_entries(calibrate.modelopt_config("int8_sq"))
    for kv in qformats.KV_ROWS:
        with_kv = calibrate.quant_cfg_entries(calibrate.modelopt_config("int8_sq", kv_cache_dtype=kv.name))
        added = [entry for entry in with_kv if entry not in plain]
        assert added and all("bmm_quantizer" in pattern for pattern, _ in added), kv.name
    int4 = calibrate.modelopt_config("int4_wo", block_size=64)
    blocks = [c.get("block_sizes") for _, attrs in calibrate.quant_cfg_entries(int4)
              for c in (attrs if isinstance(attrs, list) else [attrs or {}])]
    assert any(b and (b.get(-1) == 64 or b.get("-1") == 64) for b in blocks)


def _decoder_with_inputs(*in_features: int):
    torch = pytest.importorskip("torch")
    layer = torch.nn.Module()
    for i, size in enumerate(in_features):
        layer.add_module(f"proj{i}", torch.nn.Linear(size, 8))
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([layer])
    return model


def test_int4_group_size_is_one_tensorrt_llm_takes():
    # TensorRT-LLM's groupwise INT4 GEMMs take 128 and 64: SmolLM2's 576 gets 64, and 96 (32 would divide it) is refused
    assert calibrate.int4_block_size(_decoder_with_inputs(1536, 4096)) == 128
    assert calibrate.int4_block_size(_decoder_with_inputs(576, 1536)) == 64
    with pytest.raises(QuantError, match="no INT4 group size TensorRT-LLM takes"):
        calibrate.int4_block_size(_decoder_with_inputs(96))


def test_w4a8_awq_group_size_is_128_only():
    # TensorRT-LLM refuses W4A8_AWQ with group size 64: a 576-wide model is refused in one line, not exported
    assert calibrate.int4_block_size(_decoder_with_inputs(1536, 4096), "w4a8_awq") == 128
    with pytest.raises(QuantError, match="w4a8_awq.*128.*576") as refused:
        calibrate.int4_block_size(_decoder_with_inputs(576, 1536), "w4a8_awq")
    assert "int4_awq" in (refused.value.fix or "")
