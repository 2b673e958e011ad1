"""What the tensorrtllm repository takes from the engine (issue 21 items 9, 10): the logits dtype the backend checks
against, and the sequence limits, each from one source (the engine, else the checkpoint and the recorded
trtllm-build command). Render only, no server."""

from __future__ import annotations

import json
import shutil

import pytest

from llm_quant.config import TrtllmBuildOptions
from llm_quant.export.engine import trtllm_build_argv
from quant_common.errors import QuantError
from triton_backend import config_pbtxt, engine_facts
from triton_backend.repository import package_for_build

LOGITS_OUTPUTS = {"tensorrt_llm": ("context_logits", "generation_logits"),
                  "ensemble": ("context_logits", "generation_logits"),
                  "tensorrt_llm_bls": ("context_logits", "generation_logits")}


def _build_dir(tiny_build, tmp_path, *, checkpoint_logits=None, opts=None):
    """A build folder as llm-quant build leaves it before the engine exists: checkpoint config, build.json with
    the printed trtllm-build command, an empty engine folder."""
    build = tmp_path / "build"
    shutil.copytree(tiny_build / "embedded", build / "embedded")
    checkpoint = build / "trtllm_checkpoint"
    checkpoint.mkdir()
    config = {"architecture": "LlamaForCausalLM", "dtype": "float16", "vocab_size": 512}
    if checkpoint_logits:
        config["logits_dtype"] = checkpoint_logits
    (checkpoint / "config.json").write_text(json.dumps(config))
    (build / "engine").mkdir()
    argv = trtllm_build_argv(checkpoint, build / "engine", opts or TrtllmBuildOptions(max_input_len=100,
                                                                                      max_seq_len=160))
    (build / "build.json").write_text(json.dumps({"engine": {"status": "skipped", "command": argv}}))
    return build


def _data_types(repo):
    from tritonclient.grpc import model_config_pb2 as pb

    out = {}
    for model, names in LOGITS_OUTPUTS.items():
        config = config_pbtxt.load(repo / model / "config.pbtxt")
        out[model] = {pb.DataType.Name(t.data_type) for t in config.output if t.name in names}
    return out


def _engine(tmp_path, logits_dtype):
    engine = tmp_path / f"engine-{logits_dtype}"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({
        "build_config": {"max_input_len": 100, "max_seq_len": 200},
        "pretrained_config": {"logits_dtype": logits_dtype, "vocab_size": 512}}))
    return engine


def test_logits_datatype_is_the_engines(tiny_build, tmp_path):
    """modelopt writes logits_dtype = the checkpoint dtype (float16); trtllm-build keeps it and the backend
    TLLM_CHECKs every returned logits tensor against the config's data_type."""
    for dtype, data_type in (("float16", "TYPE_FP16"), ("float32", "TYPE_FP32")):
        repo = package_for_build(tiny_build, engine_dir=_engine(tmp_path, dtype), out=tmp_path / dtype).path
        assert _data_types(repo) == {model: {data_type} for model in LOGITS_OUTPUTS}


def test_logits_datatype_before_the_engine_is_the_checkpoints(tiny_build, tmp_path):
    build = _build_dir(tiny_build, tmp_path, checkpoint_logits="float16")
    repo = package_for_build(build, runtime="tensorrtllm", engine_dir=build / "engine",
                             trtllm_checkpoint_dir=build / "trtllm_checkpoint", out=tmp_path / "repo").path
    assert _data_types(repo)["tensorrt_llm"] == {"TYPE_FP16"}


def test_logits_datatype_contradictions_are_refused(tiny_build, tmp_path):
    with pytest.raises(QuantError, match="triton.logits_datatype TYPE_FP32 contradicts the engine's float16 logits"):
        package_for_build(tiny_build, engine_dir=_engine(tmp_path, "float16"), out=tmp_path / "a",
                          options={"logits_datatype": "TYPE_FP32"})
    with pytest.raises(QuantError, match="logits are bfloat16.*--logits_dtype float32"):
        package_for_build(tiny_build, engine_dir=_engine(tmp_path, "bfloat16"), out=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_limits_before_the_engine_are_the_trtllm_build_commands(tiny_build, tmp_path):
    """The model allows 256 positions, the printed trtllm-build builds for 100 input / 160 total tokens: the
    preprocessing must refuse prompts the executor would refuse."""
    build = _build_dir(tiny_build, tmp_path)
    result = package_for_build(build, runtime="tensorrtllm", engine_dir=build / "engine", out=tmp_path / "repo")
    params = config_pbtxt.parameters_of(config_pbtxt.load(result.path / "preprocessing" / "config.pbtxt"))
    assert (result.max_input_len, result.max_seq_len) == (100, 160) and params["max_input_len"] == "100"
    # once built, the engine's own config.json is the source
    (build / "engine" / "config.json").write_text(json.dumps({"build_config": {"max_input_len": 90,
                                                                               "max_seq_len": 150}}))
    result = package_for_build(build, runtime="tensorrtllm", engine_dir=build / "engine", out=tmp_path / "repo")
    assert (result.max_input_len, result.max_seq_len) == (90, 150)
    with pytest.raises(QuantError, match="triton.max_input_len 120 is above the engine's max_input_len 90"):
        package_for_build(build, runtime="tensorrtllm", engine_dir=build / "engine", out=tmp_path / "repo",
                          options={"max_input_len": 120})


def test_unknown_engine_limits_are_refused(tiny_build, tmp_path):
    build = _build_dir(tiny_build, tmp_path)
    (build / "build.json").unlink()
    with pytest.raises(QuantError, match="no config.json and no trtllm-build command is recorded"):
        package_for_build(build, runtime="tensorrtllm", engine_dir=build / "engine", out=tmp_path / "repo")
    # a recorded command for another folder is not this engine's
    other = _build_dir(tiny_build, tmp_path / "x")
    shutil.copy(other / "build.json", build / "build.json")
    with pytest.raises(QuantError, match="no trtllm-build command is recorded"):
        package_for_build(build, runtime="tensorrtllm", engine_dir=build / "engine", out=tmp_path / "repo")


def test_vocab_size_reaches_the_preprocessing(tiny_build, tmp_path):
    """An embedding_bias row must be as long as the engine's vocabulary (gptDecoderBatched.cpp)."""
    repo = package_for_build(tiny_build, engine_dir=_engine(tmp_path, "float32"), out=tmp_path / "repo").path
    params = config_pbtxt.parameters_of(config_pbtxt.load(repo / "preprocessing" / "config.pbtxt"))
    assert params["vocab_size"] == "512"


def test_engine_facts_cite_upstream():
    facts = engine_facts.table()
    sources = [facts.logits_dtype.source, facts.logits_dtype.default_source, facts.logits_dtype.override_source,
               facts.logits_dtype.engine_source, facts.backend_logits.config_source, *facts.backend_logits.checks,
               facts.build_limits.source, facts.embedding_bias.source, facts.embedding_bias.preprocessing_source,
               facts.embedding_bias.backend_source]
    for source in sources:
        assert source.repo and source.path and (source.tag or source.commit) and source.line
    assert set(facts.logits_dtype.runtime_accepts) == set(facts.backend_logits.data_types)
    assert engine_facts.command_limits("trtllm-build --max_input_len 7 --max_seq_len 9") == (7, 9)
    assert engine_facts.command_limits(["trtllm-build", "--max_input_len", "7"]) is None


def test_preset_triton_limits_above_the_engine_are_refused(tmp_path):
    """The one source is trtllm_build's: a preset asking preprocessing to pass longer prompts is refused."""
    import yaml

    from llm_quant.model import presets

    data = yaml.safe_load((presets.PRESET_DIR / "llama.yaml").read_text())
    data.setdefault("triton", {})["max_input_len"] = data.get("trtllm_build", {}).get("max_input_len", 1024) + 1
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(QuantError, match="triton.max_input_len 1025 is above trtllm_build.max_input_len 1024"):
        presets.read_preset(path)
