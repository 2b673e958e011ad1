"""Bad input: one clear line, non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from llm_quant import cli
from llm_quant.calibration import calibrate
from llm_quant.model import presets
from quant_common.errors import QuantError
from tests.llm_quant.conftest import build_tiny_llama


@pytest.fixture(scope="module")
def app():
    return cli.app


def run(app, args, monkeypatch=None):
    result = CliRunner().invoke(app, args)
    text = (result.stderr if hasattr(result, "stderr") else result.output) or result.output
    return result.exit_code, text


def assert_one_line_error(code, text, *needles):
    assert code != 0
    lines = [line for line in text.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_nothing_written(parent):
    assert not parent.exists() or not any(parent.iterdir()), list(parent.iterdir())


def test_unknown_preset(app, tmp_path):
    code, text = run(app, ["build", "--model", "nosuchpreset", "--out", str(tmp_path / "o" / "out")])
    assert_one_line_error(code, text, "unknown preset 'nosuchpreset'", "llama")
    assert_nothing_written(tmp_path / "o")


def test_unknown_qformat(app, tmp_path, tiny_llama):
    code, text = run(app, ["build", "--model", str(tiny_llama), "--qformat", "int3", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, text, "unknown qformat 'int3'", "int8_sq")
    assert not (tmp_path / "o").exists()


def test_hub_id_while_offline(app, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, text = run(app, ["build", "--model", "no-such-org/no-such-model", "--out", str(tmp_path / "o")])
    assert_one_line_error(code, text, "no-such-org/no-such-model", "HF_HUB_OFFLINE")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("missing", ["config", "tokenizer"])
def test_model_folder_incomplete(app, tmp_path, tiny_llama, missing):
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama, folder)
    victims = ["config.json"] if missing == "config" else ["tokenizer.json", "tokenizer_config.json"]
    for name in victims:
        (folder / name).unlink()
    code, text = run(app, ["build", "--model", str(folder), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, text, f"has no {missing}")
    assert not (tmp_path / "o").exists()


def test_gpu_only_qformat_on_cpu(app, tmp_path, tiny_llama):
    code, text = run(app, ["build", "--model", str(tiny_llama), "--qformat", "nvfp4", "--device", "cpu",
                           "--out", str(tmp_path / "o")])
    assert_one_line_error(code, text, "nvfp4 needs a CUDA GPU")
    assert not (tmp_path / "o").exists()


def test_empty_calibration_data(app, tmp_path, tiny_llama):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    code, text = run(app, ["build", "--model", str(tiny_llama), "--calib-file", str(empty), "--device", "cpu",
                           "--out", str(tmp_path / "o" / "out")])
    assert_one_line_error(code, text, "calibration data is empty")
    assert_nothing_written(tmp_path / "o")


def test_unwritable_output(app, tmp_path, tiny_llama):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, text = run(app, ["build", "--model", str(tiny_llama), "--device", "cpu", "--calib-size", "2",
                           "--calib-seq-len", "32", "--out", str(blocker / "out")])
    assert_one_line_error(code, text, str(blocker))
    assert blocker.read_text() == "not a directory"


def test_foreign_nonempty_output_dir_is_refused(app, tmp_path, tiny_llama):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, text = run(app, ["build", "--model", str(tiny_llama), "--device", "cpu", "--calib-size", "2",
                           "--calib-seq-len", "32", "--out", str(out)])
    assert_one_line_error(code, text, "not empty")
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_build_help_has_examples(app):
    result = CliRunner().invoke(app, ["build", "--help"])
    assert result.exit_code == 0 and "llm-quant build --model llama --qformat int8_sq" in result.output
    result = CliRunner().invoke(app, ["eval", "--help"])
    assert result.exit_code == 0 and "--accuracy-budget" in result.output


def test_tiny_builder_without_config(tmp_path):
    folder = build_tiny_llama(tmp_path / "m", config=False)
    assert not (folder / "config.json").exists()


def test_bad_triton_option_in_preset_fails_at_load_before_calibration(app, tmp_path, tiny_llama, monkeypatch):
    presets_dir = tmp_path / "presets"
    presets_dir.mkdir()
    good = (presets.PRESET_DIR / "llama.yaml").read_text()
    assert "\ntriton:\n  max_batch_size: 8\n" in good
    (presets_dir / "llama.yaml").write_text(good.replace("\ntriton:\n  max_batch_size: 8\n",
                                                         "\ntriton:\n  max_batch_size: 8\n  no_such_option: 1\n"))
    monkeypatch.setattr(presets, "PRESET_DIR", presets_dir)

    def never(*args, **kwargs):
        raise AssertionError("calibration must not start with a bad preset")

    monkeypatch.setattr(calibrate, "quantize", never)
    code, text = run(app, ["build", "--model", "llama", "--model-path", str(tiny_llama), "--device", "cpu",
                           "--out", str(tmp_path / "o" / "out")])
    assert_one_line_error(code, text, "presets/llama.yaml is invalid", "triton.no_such_option")
    assert_nothing_written(tmp_path / "o")
    # An out-of-range value fails the same way, when the preset is loaded.
    (presets_dir / "bad.yaml").write_text(good.replace("max_batch_size: 8\n  decoupled", "max_batch_size: 0\n  decoupled"))
    with pytest.raises(QuantError, match="triton.max_batch_size"):
        presets.load_preset("bad")


def test_llmapi_runtime_without_the_hf_checkpoint_is_refused(app, tiny_llama, tmp_path):
    code, text = run(app, ["build", "--model", str(tiny_llama), "--qformat", "fp8", "--triton-runtime", "llmapi",
                           "--no-hf-checkpoint", "--device", "cpu", "--out", str(tmp_path / "o" / "out")])
    assert_one_line_error(code, text, "--no-hf-checkpoint", "llmapi")
    assert_nothing_written(tmp_path / "o")
