"""Repository layout and configs (no server): every config parses with model_config_pb2; the TensorRT-LLM
backend's mandatory parameters are all filled; bad input fails with one line and writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from quant_common.errors import QuantError
from triton_backend import config_pbtxt
from triton_backend.interface import default_family
from triton_backend.options import TritonOptions
from triton_backend.repository import package_for_build


def _configs(repo):
    return {p.parent.name: config_pbtxt.load(p) for p in sorted(repo.glob("*/config.pbtxt"))}


def _engine_dir(tmp_path, logits_dtype=None):
    # What trtllm-build writes next to the engine files: config.json with the build limits (and logits dtype).
    engine = tmp_path / "engine"
    engine.mkdir()
    config = {"build_config": {"max_input_len": 100, "max_seq_len": 200}, "pretrained_config": {"vocab_size": 384}}
    if logits_dtype:
        config["pretrained_config"]["logits_dtype"] = logits_dtype
    (engine / "config.json").write_text(json.dumps(config))
    return engine


def test_pytorch_repository_shape(tiny_build, tmp_path):
    result = package_for_build(tiny_build, out=tmp_path / "repo")
    configs = _configs(result.path)
    assert result.runtime == "pytorch"
    assert set(configs) == {"ensemble", "preprocessing", "tensorrt_llm", "postprocessing", "tensorrt_llm_bls"}
    core = configs["tensorrt_llm"]
    assert core.backend == "python" and core.model_transaction_policy.decoupled
    inputs = {t.name for t in core.input}
    assert {"input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "temperature",
            "runtime_top_k", "runtime_top_p", "seed", "streaming"} <= inputs
    # upstream's outputs, so the ensemble routes them as upstream does; this runtime fills the first two
    assert {t.name for t in core.output} == {t.name for t in default_family().models["tensorrt_llm"].outputs}
    assert (result.path / "tensorrt_llm" / "1" / "model.py").is_file()
    assert config_pbtxt.parameters_of(core)["batch_requests"] == "true"
    # The model's limit (max_position_embeddings 256 of the tiny model) reaches the preprocessing model.
    pre = config_pbtxt.parameters_of(configs["preprocessing"])
    assert pre["max_input_len"] == "255" and result.max_seq_len == 256
    # Outside the build folder, paths are absolute; inside it they are relative (the folder can move whole).
    assert pre["tokenizer_dir"] == str((tiny_build / "embedded").resolve())
    inside = package_for_build(tiny_build, out=tiny_build / "triton_repo_relative")
    assert config_pbtxt.parameters_of(_configs(inside.path)["preprocessing"])["tokenizer_dir"] == "../embedded"
    shutil.rmtree(inside.path)
    steps = [s.model_name for s in configs["ensemble"].ensemble_scheduling.step]
    assert steps == ["preprocessing", "tensorrt_llm", "postprocessing"]


def test_tensorrtllm_config_has_every_mandatory_parameter(tiny_build, tmp_path):
    engine = _engine_dir(tmp_path, logits_dtype="float16")
    opts = TritonOptions(max_batch_size=16, max_queue_delay_microseconds=100, max_queue_size=32,
                         kv_cache_free_gpu_mem_fraction=0.8)
    result = package_for_build(tiny_build, options=opts, engine_dir=engine, out=tmp_path / "repo")
    assert result.runtime == "tensorrtllm"  # auto: an engine is there
    assert (result.max_input_len, result.max_seq_len) == (100, 200)
    core = _configs(result.path)["tensorrt_llm"]
    params = config_pbtxt.parameters_of(core)
    assert core.backend == "tensorrtllm"  # triton_backend
    assert core.max_batch_size == 16  # triton_max_batch_size
    assert core.model_transaction_policy.decoupled is True  # decoupled_mode
    assert core.dynamic_batching.max_queue_delay_microseconds == 100  # max_queue_delay_microseconds
    assert core.dynamic_batching.default_queue_policy.max_queue_size == 32  # max_queue_size
    assert params["gpt_model_path"] == str(engine.resolve())  # engine_dir
    assert params["gpt_model_type"] == "inflight_fused_batching"  # batching_strategy
    types = {t.name: t.data_type for t in list(core.input) + list(core.output)}
    from tritonclient.grpc import model_config_pb2 as pb

    assert types["encoder_input_features"] == pb.TYPE_FP16  # encoder_input_features_data_type
    assert types["context_logits"] == types["generation_logits"] == pb.TYPE_FP16  # logits_datatype: the engine's
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.8"
    assert params["max_beam_width"] == "1" and params["exclude_input_in_output"] == "true"
    assert not (result.path / "tensorrt_llm" / "1" / "model.py").exists()  # the C++ backend runs it


def test_llmapi_repository(tiny_build, tmp_path):
    result = package_for_build(tiny_build, runtime="llmapi", hf_checkpoint_dir=tiny_build / "base",
                               out=tmp_path / "repo")
    assert set(_configs(result.path)) == {"tensorrt_llm"}
    model_yaml = yaml.safe_load((result.path / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert model_yaml["model"] == str((tiny_build / "base").resolve())
    assert model_yaml["backend"] == "pytorch"
    assert model_yaml["kv_cache_config"]["free_gpu_memory_fraction"] == 0.9


@pytest.mark.parametrize("text, words", [
    ('name: "m"\nbackend: "python"\nmax_batch_size: ${triton_max_batch_size}\n', "unfilled"),
    ('name: "m"\nbackend: "python"\nmax_batchsize: 4\n', "not a valid Triton model config"),
    ('name: "m"\nbackend: "python"\ninput [ { name: "x" data_type: TYPE_NOPE dims: [ 1 ] } ]\n',
     "not a valid Triton model config"),
    ('name: "m"\nmax_batch_size: 4\n', "neither a backend nor a platform"),
])
def test_validation_rejects_bad_configs(text, words):
    with pytest.raises(QuantError, match=words):
        config_pbtxt.validate(text)


def test_bad_inputs_write_nothing(tiny_build, tmp_path):
    out = tmp_path / "repo"
    with pytest.raises(QuantError, match="needs a TensorRT-LLM engine"):
        package_for_build(tiny_build, runtime="tensorrtllm", out=out)
    with pytest.raises(QuantError, match="invalid triton options"):
        package_for_build(tiny_build, options={"max_batch_size": 0}, out=out)
    with pytest.raises(QuantError, match="invalid triton options"):
        package_for_build(tiny_build, options={"no_such_option": 1}, out=out)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_build / "embedded", broken / "embedded")
    (broken / "embedded" / "runtime.json").write_text('{"format": "other"}')
    with pytest.raises(QuantError, match="expected 'tq-embedded-v1'"):
        package_for_build(broken, out=out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (broken / "embedded" / name).unlink()
    with pytest.raises(QuantError, match="no tokenizer files"):
        package_for_build(broken, out=out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".repo")] == []


def test_repackaging_replaces_whole_tree(tiny_build, tmp_path):
    out = tmp_path / "repo"
    package_for_build(tiny_build, out=out)
    (out / "stale_model").mkdir()
    package_for_build(tiny_build, options={"max_batch_size": 4}, out=out)
    assert not (out / "stale_model").exists()
    assert _configs(out)["ensemble"].max_batch_size == 4


def test_paths_name_the_final_build_folder(tiny_build, tmp_path):
    # llm-quant build packages inside quant_common.atomic.staged_dir's staging folder, renamed when complete.
    staging = tmp_path / ".llama.staging-abc123"
    shutil.copytree(tiny_build / "embedded", staging / "embedded")
    engine = _engine_dir(staging)
    result = package_for_build(staging, engine_dir=engine, final_build_dir=tmp_path / "llama")
    params = config_pbtxt.parameters_of(_configs(result.path)["tensorrt_llm"])
    assert params["gpt_model_path"] == str((tmp_path / "llama" / "engine").resolve())
    manifest = json.loads((result.path / "repository.json").read_text())
    assert manifest["spec"]["engine_dir"] == params["gpt_model_path"]
    assert manifest["result"]["path"] == str((tmp_path / "llama" / "triton_repo").resolve())
    assert result.path == staging / "triton_repo"  # the caller publishes it
