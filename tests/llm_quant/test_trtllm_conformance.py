"""trtllm-build argv against the TensorRT-LLM fact table (llm_quant/upstream/trtllm_build.yaml), release by release.

The parametrized cases are generated from the table: a new release or rule row adds cases, no test edits.
"""

from __future__ import annotations

import itertools
import json

import pytest

from llm_quant.config import TrtllmBuildOptions
from llm_quant.export import engine, sq_checkpoint
from llm_quant.export.engine import Target, trtllm_build_argv
from llm_quant.pipeline import build
from llm_quant.upstream import target_version, trtllm_facts, version_key
from quant_common import qformats
from quant_common.errors import QuantError
from tests.llm_quant.helpers import tiny_config, trt_config

FACTS = trtllm_facts()
RELEASES = [r.name for r in FACTS.releases]
SQ_FACTS = sq_checkpoint.facts()
QUANT_ALGOS = sorted({row.quant_algo for row in qformats.QFORMAT_ROWS} | {SQ_FACTS.quant_algo.name}, key=str)
KV_ALGOS = [None, *sorted({row.kv_cache_quant_algo for row in qformats.KV_ROWS})]
PAGED = TrtllmBuildOptions(kv_cache_type="paged")


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_every_row_cites_upstream():
    rows = [*FACTS.releases, *FACTS.flags, *FACTS.paged_context_fmha, *FACTS.quant_algos, *FACTS.int4_group_sizes]
    for row in rows:
        assert "/" in row.source.repo and row.source.path, row
        assert row.source.tag or row.source.commit, f"{row}: no tag or commit"
    named = {r.release for r in FACTS.paged_context_fmha} | {r.release for r in FACTS.quant_algos}
    named |= {name for f in FACTS.flags for name in f.releases}
    assert named <= set(RELEASES)
    assert {r.release for r in FACTS.paged_context_fmha} == set(RELEASES), "each release needs its FMHA rule"


@pytest.mark.parametrize("release", [*RELEASES, None])
@pytest.mark.parametrize(("quant_algo", "kv_algo"), list(itertools.product(QUANT_ALGOS, KV_ALGOS)))
def test_argv_is_accepted_by_release(release, quant_algo, kv_algo):
    argv = trtllm_build_argv("ckpt", "eng", PAGED, target=Target(quant_algo, kv_algo, release))
    flags = _flags(argv)
    for name, value in flags.items():
        row = FACTS.flag(name, release)
        assert row.values is None or value in row.values, (name, value, row.source.cite())
    # the paged context FMHA value never trips a rule: not an error (0.16/0.17), not a silent drop (0.18+)
    for rule in FACTS.paged_context_fmha_rules(release):
        if flags["--use_paged_context_fmha"] == "enable":
            assert rule.allows(quant_algo, kv_algo), rule.source.cite()


@pytest.mark.parametrize("release", RELEASES)
def test_release_of_each_quant_algo_is_known(release):
    rows = [r for r in FACTS.quant_algos if r.release == release]
    for row in rows:
        for qformat in qformats.QFORMAT_ROWS:
            if qformat.quant_algo is not None and qformat.name != "nvfp4":
                assert qformat.quant_algo in row.quant_algo, (qformat.name, row.source.cite())
        for kv in qformats.KV_ROWS:
            assert kv.kv_cache_quant_algo in row.kv_cache_quant_algo


def test_int8_kv_cache_disables_paged_context_fmha():
    """Regression (issue 8 item 2): `--use_paged_context_fmha enable` was always passed; 0.16/0.17 builders raise
    "Paged Context FMHA doesn't work with int8 kv cache"."""
    argv = trtllm_build_argv("c", "e", PAGED, target=Target("W8A8_SQ_PER_CHANNEL", "INT8"))
    assert _flags(argv)["--use_paged_context_fmha"] == "disable"
    fp8_kv_sq = trtllm_build_argv("c", "e", PAGED, target=Target("W8A8_SQ_PER_CHANNEL", "FP8"))
    assert _flags(fp8_kv_sq)["--use_paged_context_fmha"] == "disable"
    fp8_fp8 = trtllm_build_argv("c", "e", PAGED, target=Target("FP8", "FP8"))
    assert _flags(fp8_fp8)["--use_paged_context_fmha"] == "enable"
    # W4A8_AWQ + FP8 KV: 0.16 accepts, 0.17 rejects -> per release, and off when the release is unknown
    assert _flags(trtllm_build_argv("c", "e", PAGED, target=Target("W4A8_AWQ", "FP8", "0.16")))[
        "--use_paged_context_fmha"] == "enable"
    assert _flags(trtllm_build_argv("c", "e", PAGED, target=Target("W4A8_AWQ", "FP8", "0.17")))[
        "--use_paged_context_fmha"] == "disable"
    assert _flags(trtllm_build_argv("c", "e", PAGED, target=Target("W4A8_AWQ", "FP8")))[
        "--use_paged_context_fmha"] == "disable"
    continuous = trtllm_build_argv("c", "e", TrtllmBuildOptions(kv_cache_type="continuous"), target=Target())
    assert "--use_paged_context_fmha" not in continuous


def test_target_version_order(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"version": "0.17.0"}))
    assert target_version("1.2.0", tmp_path, None) == ("1.2.0", "installed")
    assert target_version(None, tmp_path, "1.0.0") == ("0.17.0", "engine config.json")
    assert target_version(None, None, "1.0.0") == ("1.0.0", "--trtllm-version")
    assert target_version(None, None, None)[0] is None
    with pytest.raises(QuantError, match="differs from the installed"):
        target_version("1.2.0", None, "0.17")
    assert FACTS.release_for("0.17.0.dev2024121700").name == "0.17" and version_key("1.2.0rc8") == (1, 2, 0)
    with pytest.raises(QuantError, match="outside the releases"):
        FACTS.release_for("1.3.0")


def test_resolve_target_without_trtllm_installed():
    if engine.installed_trtllm() is not None:
        pytest.skip("TensorRT-LLM is installed: the target is the installed one")
    target, facts = engine.resolve_target({"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"},
                                          requested_version="0.17.0")
    assert target == Target("FP8", "FP8", "0.17") and facts["from"] == "--trtllm-version"


def test_int8_kv_cache_build_writes_trtllm_checkpoint(tiny_llama, tmp_path):
    """Regression (issue 8 item 2): int8_sq + INT8 KV stopped at the HF export (modelopt's "Invalid KV cache
    quantization format"); the TensorRT-LLM checkpoint is written and the HF one skipped with one line."""
    out = tmp_path / "out"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", kv_cache_dtype="int8", sq_activations="per_tensor")
    result = build(cfg, model_source=source)
    quant = trt_config(out)["quantization"]
    assert (quant["quant_algo"], quant["kv_cache_quant_algo"]) == ("W8A8_SQ_PER_CHANNEL", "INT8")
    assert result.hf_checkpoint is None and "INT8 KV cache" in (result.hf_checkpoint_skipped or "")
    assert not (out / "hf_checkpoint").exists()
    assert "--use_paged_context_fmha disable" in result.engine_command
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["engine_target"]["release"] is None


@pytest.mark.parametrize("via_preset", [False, True])
def test_gemma2_is_refused_at_preset_resolution(tmp_path, via_preset):
    """Regression (issue 8 item 3): gemma.yaml mapped gemma2 to decoder_type gemma, which modelopt 0.47 cannot
    export (KeyError 'parallel_attn_mlp_res'); refused in one line before any calibration."""
    transformers = pytest.importorskip("transformers")
    from llm_quant.model.presets import load_preset
    from llm_quant.pipeline import make_config


    folder = tmp_path / "tiny-gemma2"
    config = transformers.Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    transformers.Gemma2ForCausalLM(config).save_pretrained(folder)  # a tiny random Gemma2
    (folder / "tokenizer.json").write_text("{}")  # the refusal comes from config.json, before the tokenizer loads
    with pytest.raises(QuantError, match="model_type 'gemma2' is not supported") as info:
        if via_preset:
            make_config("gemma", model_path=str(folder), overrides={"out": tmp_path / "o", "device": "cpu"})
        else:
            make_config(str(folder), overrides={"out": tmp_path / "o", "device": "cpu"})
    assert "\n" not in str(info.value)
    assert "gemma2" not in load_preset("gemma").model_types


def test_refused_model_types_cite_modelopt_and_have_no_preset():
    from llm_quant.model.presets import available_presets, load_preset
    from llm_quant.upstream import ModeloptExportFacts
    from quant_common.facts import load_table

    table = load_table("llm_quant.upstream", "modelopt_export.yaml", ModeloptExportFacts)
    accepted = {t for name in available_presets() for t in load_preset(name).model_types}
    for row in table.refused_model_types:
        assert row.source.repo == "NVIDIA/Model-Optimizer" and row.source.path and row.source.tag
        assert row.model_type not in accepted


def test_qwen2_checkpoint_gets_qwen_type():
    """modelopt 0.47 (no TensorRT-LLM installed) writes no qwen_type; TensorRT-LLM's QWenForCausalLM reads it."""
    transformers = pytest.importorskip("transformers")
    from llm_quant.export.checkpoints import correct_trtllm_config


    hf = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1)
    config: dict = {"architecture": "QWenForCausalLM", "quantization": {}}
    changes = correct_trtllm_config(config, hf, [])
    assert config["qwen_type"] == "qwen2" and "qwen_type -> qwen2" in changes
    llama: dict = {"architecture": "LlamaForCausalLM", "quantization": {}}
    correct_trtllm_config(llama, transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32,
                                                          intermediate_size=64, num_attention_heads=2), [])
    assert "qwen_type" not in llama


def test_smoothquant_table_cites_upstream_and_names_a_known_algo():
    rows = [SQ_FACTS.quant_algo, *SQ_FACTS.tensors, *SQ_FACTS.static_only, *SQ_FACTS.semantics.values(),
            SQ_FACTS.hf_checkpoint]
    for row in rows:
        assert "/" in row.source.repo and row.source.path and (row.source.tag or row.source.commit), row
    # the per-token algo is a QuantAlgo member in every release the build table knows
    for row in FACTS.quant_algos:
        assert SQ_FACTS.quant_algo.name in row.quant_algo, row.source.cite()
    # each linear TensorRT-LLM fuses has a weight and a per-channel scale; row linears also a smoother
    by_module: dict[str, set[str]] = {}
    for tensor in SQ_FACTS.tensors:
        by_module.setdefault(tensor.module, set()).add(tensor.name)
    for linear in ("attention.qkv", "mlp.fc", "mlp.gate"):
        assert by_module[linear] == {"weight", "per_channel_scale"}
    for linear in sq_checkpoint.ROW_LINEARS:
        assert by_module[linear] == {"weight", "per_channel_scale", "smoother"}
    assert set(sq_checkpoint.NORM_OF.values()) | set(sq_checkpoint.NORM_OF) | set(sq_checkpoint.ROW_LINEARS) \
        == set(by_module)


def test_per_token_int8_sq_build_matches_the_table(tiny_llama, tmp_path):
    """The exported per-token checkpoint: config, every table tensor with its dtype/shape, nothing static."""
    from tests.llm_quant.helpers import rank_weights

    cfg, source = tiny_config(tiny_llama, tmp_path / "out", qformat="int8_sq", sq_activations="per_token",
                              sq_alpha_search=False, build_engine=False)
    result = build(cfg, model_source=source)
    config = trt_config(tmp_path / "out")
    assert config["quantization"]["quant_algo"] == SQ_FACTS.quant_algo.name == result.quant_algo
    weights = rank_weights(tmp_path / "out")
    hidden = config["hidden_size"]
    for layer in range(config["num_hidden_layers"]):
        for fact in SQ_FACTS.tensors:
            tensor = weights[f"transformer.layers.{layer}.{fact.module}.{fact.name}"]
            dtype = config["dtype"] if fact.dtype == "model" else fact.dtype
            assert str(tensor.dtype).removeprefix("torch.") == dtype, fact
            owner = weights[f"transformer.layers.{layer}.{fact.module}.weight"]
            sizes = {"out": owner.shape[0], "in": owner.shape[-1], "hidden": hidden}
            assert tuple(tensor.shape) == tuple(sizes.get(s, s) for s in fact.shape), fact
    static = {f.name for f in SQ_FACTS.static_only}
    assert not [k for k in weights if k.rsplit(".", 1)[-1] in static | set(sq_checkpoint.MODELOPT_SCALES)]
    # the engine step renders its argv for this algo like for any other (no extra SmoothQuant flag)
    assert "--checkpoint_dir" in result.engine_command


def test_int4_group_sizes_cover_every_int4_qformat():
    # every INT4 qformat's quant_algo has its group sizes in the table, and those are QuantAlgo names of every release
    known = set.intersection(*(set(row.quant_algo) for row in FACTS.quant_algos))
    assert {a for row in FACTS.int4_group_sizes for a in row.quant_algos} <= known
    for row in qformats.QFORMAT_ROWS:
        if row.int4_blocks:
            sizes = FACTS.group_sizes_for(str(row.quant_algo))
            assert sizes and list(sizes) == sorted(sizes, reverse=True), row.name
