"""Rendered repositories against the TensorRT-LLM backend fact table (triton_backend/upstream/tensorrtllm_backend.yaml).

Generated from the table: every preset x runtime x backend family (and, for engines, every qformat x KV dtype
recorded in the engine's config.json) renders a repository whose models declare upstream's inputs exactly and whose
C++ ``tensorrt_llm`` carries every parameter the backend reads without a fallback. The checks here read the
parsed config.pbtxt directly; ``conformance.check_repository`` (``llm-quant package --check``) is tested too.
No server: render only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_quant.model.presets import available_presets, load_preset
from llm_quant.upstream import expected_algorithms
from quant_common import qformats
from quant_common.errors import QuantError
from triton_backend import config_pbtxt, conformance, interface, target
from triton_backend.repository import package_for_build

FAMILIES = interface.family_names()
# One TensorRT-LLM version inside each family's range (what a user would pass or have installed).
VERSION_OF = {fam.name: fam.trtllm_min + ".0" for fam in interface.table().families}
CLI = str(Path(sys.executable).with_name("llm-quant"))


def _configs(repo):
    return {p.parent.name: config_pbtxt.load(p) for p in sorted(repo.glob("*/config.pbtxt"))}


def _engine(tmp_path, qformat, kv, version=None):
    """What trtllm-build writes beside the engine: config.json with the build limits and quantization."""
    engine = tmp_path / f"engine-{qformat}-{kv}"
    engine.mkdir()
    algo, kv_algo = expected_algorithms(qformat, kv)
    config = {"build_config": {"max_input_len": 100, "max_seq_len": 200},
              "pretrained_config": {"quantization": {"quant_algo": algo, "kv_cache_quant_algo": kv_algo}}}
    if version:
        config["version"] = version
    (engine / "config.json").write_text(json.dumps(config))
    return engine


def _assert_satisfies(repo, fam, tokenizer):
    """Every upstream model of ``fam`` we render declares upstream's inputs exactly; parameters are filled."""
    configs = _configs(repo)
    pb2 = config_pbtxt.require_model_config_pb2()
    for name in interface.UPSTREAM_MODELS:
        upstream = fam.models[name]
        declared = {t.name: t for t in configs[name].input}
        assert set(declared) == {t.name for t in upstream.inputs}, name
        for want in upstream.inputs:
            got = declared[want.name]
            if want.template is None:
                assert pb2.DataType.Name(got.data_type) == want.data_type, (name, want.name)
            assert list(got.dims) == want.dims, (name, want.name)
            assert got.optional == want.optional, (name, want.name)
            assert (list(got.reshape.shape) if got.HasField("reshape") else None) == want.reshape, (name, want.name)
    for name in conformance.CLIENT_FACING:  # item 21.12: a client may ask for any of upstream's outputs
        outputs = {t.name: t for t in configs[name].output}
        for want in fam.models[name].outputs:
            assert want.name in outputs, (name, want.name)
            assert list(outputs[want.name].dims) == want.dims, (name, want.name)
    core = configs["tensorrt_llm"]
    if core.backend == "tensorrtllm":
        params = config_pbtxt.parameters_of(core)
        for required in fam.required_parameters:
            assert required.key in params and "${" not in params[required.key], required.key
        if "tokenizer_dir" in {p.key for p in fam.required_parameters}:
            assert params["tokenizer_dir"] == str(Path(tokenizer).resolve())
    assert conformance.check_repository(repo, fam) == []


def test_table_cites_upstream_for_every_row():
    for fam in interface.table().families:
        rows = [fam.sampling, *fam.required_parameters, *fam.models.values()]
        for row in rows:
            assert row.source.repo in ("triton-inference-server/tensorrtllm_backend", "NVIDIA/TensorRT-LLM")
            assert row.source.path and (row.source.tag or row.source.commit)
        assert set(fam.models) == set(interface.UPSTREAM_MODELS)
        # The ensemble routes each input to an input its step model declares.
        for ensemble_input, (model, step_input) in fam.models["ensemble"].routes.items():
            assert ensemble_input in {t.name for t in fam.models["ensemble"].inputs}
            assert step_input in {t.name for t in fam.models[model].inputs}, (fam.name, model, step_input)


@pytest.mark.parametrize("family_name", FAMILIES)
@pytest.mark.parametrize("preset", available_presets())
def test_every_rendered_repository_satisfies_the_table(tiny_build, tmp_path, preset, family_name):
    fam = interface.family(family_name)
    options = load_preset(preset).triton
    tokenizer = tiny_build / "embedded"
    result = package_for_build(tiny_build, options=options, runtime="pytorch", out=tmp_path / "pytorch",
                               trtllm_version=VERSION_OF[family_name])
    assert result.target is not None and result.target.family == family_name
    _assert_satisfies(result.path, fam, tokenizer)
    engine = _engine(tmp_path, "int8_sq", "fp8", version=VERSION_OF[family_name])
    result = package_for_build(tiny_build, options=options, engine_dir=engine, out=tmp_path / "trt")
    assert result.runtime == "tensorrtllm" and result.target is not None
    assert result.target.family == family_name and result.target.reason.startswith("engine")
    _assert_satisfies(result.path, fam, tokenizer)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_every_qformat_and_kv_dtype_renders_the_same_interface(tiny_build, tmp_path, family_name):
    """The engine's quantization (recorded in its config.json) does not change what the backend reads."""
    fam = interface.family(family_name)
    rendered = set()
    for qformat in qformats.QFORMAT_NAMES:
        for kv in (None, *qformats.KV_NAMES):
            engine = _engine(tmp_path, qformat, kv, version=VERSION_OF[family_name])
            repo = package_for_build(tiny_build, engine_dir=engine, out=tmp_path / "trt").path
            core = (repo / "tensorrt_llm" / "config.pbtxt").read_text().replace(str(engine.resolve()), "ENGINE")
            rendered.add((core, (repo / "ensemble" / "config.pbtxt").read_text()))
    assert len(rendered) == 1
    _assert_satisfies(repo, fam, tiny_build / "embedded")


@pytest.mark.parametrize("family_name", [f for f in FAMILIES if f != "0.17-0.18"])
def test_tensorrt_llm_has_the_parameters_read_without_fallback(tiny_build, tmp_path, family_name):
    """Item 1: tensorrtllm_backend >= v0.19 reads tokenizer_dir, xgrammar_tokenizer_info_path and
    guided_decoding_backend unguarded (model_instance_state.cc getGuidedDecodingConfigFromParams)."""
    engine = _engine(tmp_path, "int8_sq", None)
    result = package_for_build(tiny_build, engine_dir=engine, out=tmp_path / "repo",
                               trtllm_version=VERSION_OF[family_name])
    params = config_pbtxt.parameters_of(_configs(result.path)["tensorrt_llm"])
    assert params["tokenizer_dir"] == str((tiny_build / "embedded").resolve())
    assert params["xgrammar_tokenizer_info_path"] == "" and params["guided_decoding_backend"] == ""


@pytest.mark.parametrize(("version", "seed", "min_tokens"),
                         [("0.18.2", "random_seed", "min_length"), ("0.19.0", "random_seed", "min_length"),
                          ("1.2.1", "seed", "min_tokens")])
def test_sampling_inputs_are_named_per_backend_version(tiny_build, tmp_path, version, seed, min_tokens):
    """Item 5: tensorrtllm_backend <= v0.19 reads random_seed/min_length (utils.h); from c2e65b8 seed/min_tokens."""
    for runtime in ("pytorch", "tensorrtllm"):
        (tmp_path / runtime).mkdir()
        engine = _engine(tmp_path / runtime, "fp8", None) if runtime == "tensorrtllm" else None
        result = package_for_build(tiny_build, runtime=runtime, engine_dir=engine, out=tmp_path / runtime / "repo",
                                   trtllm_version=version)
        configs = _configs(result.path)
        for model in ("ensemble", "tensorrt_llm", "tensorrt_llm_bls"):
            names = {t.name for t in configs[model].input}
            assert {seed, min_tokens} <= names, (runtime, model)
            assert not ({"seed", "min_tokens", "random_seed", "min_length"} - {seed, min_tokens}) & names
        core = configs["ensemble"].ensemble_scheduling.step[1]
        assert core.model_name == "tensorrt_llm"
        assert core.input_map[seed] == seed and core.input_map[min_tokens] == min_tokens


def test_ensemble_accepts_what_upstream_clients_always_send(tiny_build, tmp_path):
    """Item 0: end_to_end_grpc_client.py (v0.19.0) always sends beam_width and exclude_input_in_output, with -n
    num_return_sequences; inflight_batcher_llm_client.py --stop-after-ms sends stop to tensorrt_llm."""
    for version in ("0.19.0", "1.2.1"):
        configs = _configs(package_for_build(tiny_build, out=tmp_path / version, trtllm_version=version).path)
        for model in ("ensemble", "tensorrt_llm_bls"):
            names = {t.name for t in configs[model].input}
            assert {"text_input", "max_tokens", "stream", "beam_width", "temperature", "exclude_input_in_output",
                    "num_return_sequences"} <= names
        assert "stop" in {t.name for t in configs["tensorrt_llm"].input}
        unsupported = json.loads(config_pbtxt.parameters_of(configs["tensorrt_llm"])["unsupported_inputs"])
        assert unsupported["beam_width"] == 1 and unsupported["num_return_sequences"] == 1
        assert unsupported["lora_weights"] is None and "exclude_input_in_output" not in unsupported


def test_target_version_selection(tmp_path, monkeypatch):
    monkeypatch.setattr(target, "installed_trtllm", lambda: None)
    assert target.choose_target().family == interface.default_family().name == "0.20+"
    assert target.choose_target("0.19.0").reason == "--trtllm-version"
    engine = _engine(tmp_path, "int8_sq", None, version="0.18.2")
    chosen = target.choose_target(None, engine)
    assert chosen.family == "0.17-0.18" and chosen.trtllm_version == "0.18.2"
    with pytest.raises(QuantError, match="contradicts TensorRT-LLM 0.18.2"):
        target.choose_target("1.2.1", engine)
    with pytest.raises(QuantError, match="older than every backend version"):
        target.choose_target("0.15.0")
    monkeypatch.setattr(target, "installed_trtllm", lambda: "1.2.1")
    assert target.choose_target(None, engine).reason == "installed tensorrt_llm"  # installed wins over the engine


def test_check_names_each_problem(tiny_build, tmp_path):
    repo = package_for_build(tiny_build, out=tmp_path / "repo", trtllm_version="1.2.1").path
    ok = subprocess.run([CLI, "package", "--check", str(repo)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK for TensorRT-LLM backend 0.20+" in ok.stdout
    bad = subprocess.run([CLI, "package", "--check", str(repo), "--trtllm-version", "0.19.0"], capture_output=True,
                         text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "ensemble: missing input 'random_seed'" in bad.stderr
    assert "ensemble: input 'min_tokens' is not one upstream's ensemble declares; this backend version reads " \
           "'min_length'" in bad.stderr
    # A C++ tensorrt_llm without the guided-decoding parameters (what this package wrote before) will not load.
    engine_repo = package_for_build(tiny_build, engine_dir=_engine(tmp_path, "fp8", None), out=tmp_path / "trt",
                                    trtllm_version="0.19.0").path
    config = engine_repo / "tensorrt_llm" / "config.pbtxt"
    text = config.read_text()
    start = text.index('parameters {\n  key: "tokenizer_dir"')
    config.write_text(text[:start] + text[text.index("}\n}\n", start) + 4:])
    problems = conformance.check_repository(engine_repo, interface.family("0.19"))
    assert len(problems) == 1 and problems[0].startswith("tensorrt_llm: parameter 'tokenizer_dir' is missing")
    assert "model_instance_state.cc:413" in problems[0]
    missing = subprocess.run([CLI, "package", "--check", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode != 0 and "not a Triton model repository" in missing.stderr
