"""--runtime llmapi (TensorRT-LLM's PyTorch backend): quantizations it has no Linear for are refused before anything
is written; model.yaml / model.py / config.pbtxt follow upstream's llmapi model (facts in upstream/llmapi.yaml)."""

from __future__ import annotations

import ast
import json

import pytest
import yaml
from typer.testing import CliRunner

from llm_quant import cli
from quant_common.errors import QuantError
from quant_common.qformats import QFORMATS
from triton_backend import config_pbtxt, llmapi_support
from triton_backend.repository import MODELS_SOURCE, RepositorySpec, package


def _spec(tmp_path, quant_algo: str | None) -> RepositorySpec:
    hf = tmp_path / "hf_checkpoint"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 256}))
    (hf / "tokenizer_config.json").write_text("{}")
    if quant_algo:  # what modelopt's export_hf_checkpoint writes beside the weights
        (hf / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": quant_algo}}))
    return RepositorySpec(runtime="llmapi", tokenizer_dir=hf, hf_checkpoint_dir=hf)


def test_smoothquant_checkpoint_is_refused_before_writing(tmp_path):
    out = tmp_path / "repo"
    with pytest.raises(QuantError, match=r"W8A8_SQ_PER_CHANNEL\) cannot run on TensorRT-LLM's PyTorch backend.*"
                                         r"runs qformats fp8, int4_awq, w4a8_awq, int8_wo, int4_wo, nvfp4, full_prec"):
        package(_spec(tmp_path, "W8A8_SQ_PER_CHANNEL"), out)
    assert not out.exists()


@pytest.mark.parametrize("algo", [None, "FP8", "W4A16_AWQ", "NVFP4"])
def test_supported_checkpoints_package(tmp_path, algo):
    result = package(_spec(tmp_path, algo), tmp_path / "repo")
    assert result.models == ["tensorrt_llm"]


def test_every_qformat_is_classified_by_the_linear_table():
    supported = set(llmapi_support.supported_qformats())
    assert "int8_sq" not in supported
    assert {"fp8", "int8_wo", "int4_awq", "full_prec"} <= supported
    assert supported == {n for n, row in QFORMATS.items()
                         if row.quant_algo is None or row.quant_algo in llmapi_support.table().linear_quant_algos.quant_algos}


def test_batching_and_decoupling_live_in_model_yaml_only(tmp_path):
    result = package(_spec(tmp_path, "FP8"), tmp_path / "repo")
    text = (result.path / "tensorrt_llm" / "config.pbtxt").read_text()
    assert "max_batch_size" not in text and "model_transaction_policy" not in text
    assert not config_pbtxt.load(result.path / "tensorrt_llm" / "config.pbtxt").HasField("model_transaction_policy")
    model_yaml = yaml.safe_load((result.path / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert set(model_yaml["triton_config"]) == set(llmapi_support.table().triton_config.keys)
    assert model_yaml["triton_config"]["decoupled"] is True  # TritonOptions.decoupled default


def test_model_py_uses_the_upstream_names():
    tree = ast.parse((MODELS_SOURCE / "llmapi.py").read_text())
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                values = node.value.elts if isinstance(node.value, ast.Tuple) and isinstance(target, ast.Tuple) \
                    else [node.value]
                for name, value in zip(names, values, strict=True):
                    if isinstance(name, ast.Name):
                        constants[name.id] = ast.literal_eval(value) if not isinstance(value, ast.Dict) else None
    facts = llmapi_support.table()
    assert constants["EXTRA_DICT"] == (facts.extra_dict.module, facts.extra_dict.function)
    assert constants["PYTORCH_LLM"] == (facts.pytorch_llm.module, facts.pytorch_llm.name, facts.pytorch_llm.backend)
    assert (constants["CONFIG_ENV"], constants["CONFIG_FILE"]) == (facts.triton_config.config_env,
                                                                  facts.triton_config.config_file)
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "auto_complete_config" in defined  # sets max_batch_size / decoupled from model.yaml


def test_build_refuses_int8_sq_for_llmapi_before_writing(tmp_path):
    out = tmp_path / "o" / "out"
    result = CliRunner().invoke(cli.app, ["build", "--qformat", "int8_sq", "--triton-runtime", "llmapi",
                                          "--out", str(out)])
    text = (getattr(result, "stderr", "") or result.output)
    assert result.exit_code != 0
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "int8_sq (quant_algo W8A8_SQ_PER_CHANNEL" in errors[0], text  # either mode
    assert "Traceback" not in text and not out.parent.exists()


def test_llmapi_facts_cite_upstream():
    facts = llmapi_support.table()
    for name in type(facts).model_fields:
        source = getattr(facts, name).source
        assert source.tag or source.commit, name
