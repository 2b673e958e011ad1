"""End-to-end builds on the tiny random Llama: checkpoint contents, corrections, manifest, artifacts."""

from __future__ import annotations

import json

import pytest

from llm_quant.export.verify import fix_layer_globs, verify_trtllm_checkpoint
from llm_quant.pipeline import build
from quant_common.errors import QuantError
from tests.llm_quant.conftest import TINY_ROPE_THETA
from tests.llm_quant.helpers import rank_weights, tiny_config, trt_config

torch = pytest.importorskip("torch")
LINEARS = ("attention.qkv", "attention.dense", "mlp.fc", "mlp.gate", "mlp.proj")


@pytest.fixture(scope="module")
def int8_sq_build(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8sq") / "out"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", sq_activations="per_tensor")
    return build(cfg, model_source=source), out


def test_int8_sq_checkpoint(int8_sq_build, tiny_llama):
    result, out = int8_sq_build
    config = trt_config(out)
    assert config["quantization"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL" == result.quant_algo
    assert config["rotary_base"] == TINY_ROPE_THETA  # modelopt drops it under transformers 5; we restore it
    assert config["architecture"] == "LlamaForCausalLM"
    assert config["mapping"] == {"world_size": 1, "tp_size": 1, "pp_size": 1}
    weights = rank_weights(out)
    for layer in range(2):
        for linear in LINEARS:
            name = f"transformer.layers.{layer}.{linear}"
            w = weights[f"{name}.weight"]
            assert w.dtype == torch.int8
            scale = weights[f"{name}.weights_scaling_factor"]
            assert scale.numel() == w.shape[0] and scale.min() > 0  # per output channel
            assert weights[f"{name}.activation_scaling_factor"].numel() == 1
            smoothing = weights[f"{name}.prequant_scaling_factor"]
            assert smoothing.numel() == w.shape[1] and not torch.all(smoothing == 1)


def test_build_outputs_and_manifest(int8_sq_build):
    result, out = int8_sq_build
    assert result.engine_status == "skipped" and result.engine is None
    assert result.engine_command.startswith("trtllm-build --checkpoint_dir " + str(out / "trtllm_checkpoint"))
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["engine"]["status"] == "skipped" and "--output_dir" in manifest["engine"]["command"]
    assert manifest["result"]["trtllm_checkpoint"] == str(out / "trtllm_checkpoint")
    assert any(k.endswith("rank0.safetensors") for k in manifest["hashes"])
    assert (out / "triton_repo").is_dir() and result.triton_repo == str(out / "triton_repo")
    hf = json.loads((out / "hf_checkpoint" / "config.json").read_text())
    assert hf["quantization_config"]["quant_algo"] == "W8A8_SQ_PER_CHANNEL"
    assert (out / "hf_checkpoint" / "tokenizer.json").is_file()
    runtime = json.loads((out / "embedded" / "runtime.json").read_text())
    assert runtime["format"] == "tq-embedded-v1" and runtime["qformat"] == "int8_sq"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "no staging leftovers"


def test_fp8_with_fp8_kv_cache(tiny_llama, tmp_path):
    cfg, source = tiny_config(tiny_llama, tmp_path / "fp8", qformat="fp8", kv_cache_dtype="fp8")
    result = build(cfg, model_source=source)
    config = trt_config(tmp_path / "fp8")
    assert config["quantization"]["quant_algo"] == "FP8"
    assert config["quantization"]["kv_cache_quant_algo"] == "FP8" == result.kv_cache_quant_algo
    weights = rank_weights(tmp_path / "fp8")
    assert weights["transformer.layers.0.attention.qkv.weight"].dtype == torch.float8_e4m3fn
    assert weights["transformer.layers.1.mlp.proj.weight"].dtype == torch.float8_e4m3fn
    assert "transformer.layers.0.attention.kv_cache_scaling_factor" in weights


def _recombine_qkv(parts, heads, kv_heads, head_dim):
    qs, ks, vs = [], [], []
    tp = len(parts)
    for part in parts:
        q, k, v = part.split([heads // tp * head_dim, kv_heads // tp * head_dim, kv_heads // tp * head_dim])
        qs.append(q), ks.append(k), vs.append(v)
    return torch.cat(qs + ks + vs)


def test_tp2_ranks_recombine_to_tp1(tiny_llama, tmp_path, int8_sq_build):
    _, out1 = int8_sq_build
    cfg, source = tiny_config(tiny_llama, tmp_path / "tp2", qformat="int8_sq", sq_activations="per_tensor",
                              parallel={"tp_size": 2})
    build(cfg, model_source=source)
    config = trt_config(tmp_path / "tp2")
    assert config["mapping"]["tp_size"] == 2 and config["mapping"]["world_size"] == 2
    full, r0, r1 = rank_weights(out1), rank_weights(tmp_path / "tp2", 0), rank_weights(tmp_path / "tp2", 1)
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_size"]
    checked = 0
    for key, expected in full.items():
        a, b = r0[key], r1[key]
        if key.endswith("attention.qkv.weight") or key.endswith("attention.qkv.weights_scaling_factor"):
            got = _recombine_qkv([a, b], heads, kv_heads, head_dim)
        elif a.shape == expected.shape:
            assert torch.equal(a, b), key
            got = a
        else:
            dim = 0 if a.shape[0] != expected.shape[0] else 1
            got = torch.cat([a, b], dim=dim)
        assert got.shape == expected.shape and torch.equal(got.float(), expected.float()), key
        checked += 1
    assert checked == len(full) and any(full[k].dtype == torch.int8 for k in full)


def test_checkpoint_verifier_rejects_broken_checkpoints(int8_sq_build, tmp_path):
    import shutil

    import transformers
    from safetensors.torch import load_file, save_file

    _, out = int8_sq_build
    hf_config = transformers.AutoConfig.from_pretrained(str(out / "hf_checkpoint"))
    assert verify_trtllm_checkpoint(out / "trtllm_checkpoint", hf_config=hf_config)["quantized_linears_rank0"] == 10
    broken = tmp_path / "ckpt"
    shutil.copytree(out / "trtllm_checkpoint", broken)
    config = json.loads((broken / "config.json").read_text())
    config.pop("rotary_base")
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantError, match="rotary_base"):
        verify_trtllm_checkpoint(broken, hf_config=hf_config)
    shutil.copy(out / "trtllm_checkpoint" / "config.json", broken / "config.json")
    weights = load_file(str(broken / "rank0.safetensors"))
    weights.pop("transformer.layers.1.mlp.fc.activation_scaling_factor")
    save_file(weights, str(broken / "rank0.safetensors"))
    with pytest.raises(QuantError, match="layers.1.mlp.fc lacks activation_scaling_factor"):
        verify_trtllm_checkpoint(broken)
    config = json.loads((out / "trtllm_checkpoint" / "config.json").read_text())
    config["quantization"].update(quant_algo="W4A16_AWQ", group_size=32)  # TensorRT-LLM's INT4 kernels take 128/64
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantError, match="group_size 32 for W4A16_AWQ; TensorRT-LLM takes 128 or 64"):
        verify_trtllm_checkpoint(broken)
    config["quantization"].update(quant_algo="W4A8_AWQ", group_size=64)
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantError, match="group_size 64 for W4A8_AWQ; TensorRT-LLM takes 128"):
        verify_trtllm_checkpoint(broken)
    (broken / "rank0.safetensors").unlink()
    with pytest.raises(QuantError, match="rank0"):
        verify_trtllm_checkpoint(broken)


def test_layer_globs_are_made_exact():
    import fnmatch

    fixed, changes = fix_layer_globs(["transformer.layers.1*", "lm_head", "transformer.layers.12*"])
    assert fixed == ["transformer.layers.1.*", "lm_head", "transformer.layers.12.*"] and len(changes) == 2
    assert fnmatch.fnmatchcase("transformer.layers.1*", "transformer.layers.1*")
    assert fnmatch.fnmatchcase("transformer.layers.10.mlp.fc", "transformer.layers.1*")  # modelopt's glob: wrong
    assert not fnmatch.fnmatchcase("transformer.layers.10.mlp.fc", fixed[0])
    assert fnmatch.fnmatchcase("transformer.layers.1.mlp.fc", fixed[0])


def test_trtllm_version_reaches_the_triton_repository(tiny_llama, tmp_path):
    # llm-quant build --trtllm-version 0.19.0: the repository is rendered for tensorrtllm_backend v0.19, whose C++
    # backend reads random_seed / min_length (and three parameters without a fallback)
    out = tmp_path / "v019"
    cfg, source = tiny_config(tiny_llama, out, qformat="full_prec", trtllm_version="0.19.0")
    build(cfg, model_source=source)
    record = json.loads((out / "triton_repo" / "repository.json").read_text())
    assert record["result"]["target"]["family"] == "0.19", record["result"]["target"]
    core = (out / "triton_repo" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert '"random_seed"' in core and '"min_length"' in core and '"seed"' not in core


def test_no_hf_checkpoint_writes_the_trtllm_checkpoint_alone(tiny_llama, tmp_path):
    out = tmp_path / "trtllm-only"
    cfg, source = tiny_config(tiny_llama, out, qformat="int8_sq", sq_activations="per_tensor", hf_checkpoint=False)
    result = build(cfg, model_source=source)
    assert result.hf_checkpoint is None and "--no-hf-checkpoint" in (result.hf_checkpoint_skipped or "")
    assert not (out / "hf_checkpoint").exists()
    assert (out / "trtllm_checkpoint" / "rank0.safetensors").is_file() and (out / "embedded").is_dir()
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["result"]["hf_checkpoint"] is None


def test_verifier_reads_dtypes_and_shapes_from_the_header(int8_sq_build):
    from llm_quant.export.verify import rank_tensors

    _, out = int8_sq_build
    stored, loaded = rank_tensors(out / "trtllm_checkpoint", 0), rank_weights(out)
    assert stored.keys() == loaded.keys()
    for name, tensor in loaded.items():
        assert stored[name].dtype == str(tensor.dtype).removeprefix("torch."), name
        assert stored[name].shape == tuple(tensor.shape), name
    scale = next(k for k in loaded if k.endswith("weights_scaling_factor"))
    assert torch.equal(stored[scale].float(), loaded[scale].float())
