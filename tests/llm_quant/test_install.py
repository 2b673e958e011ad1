"""Which TensorRT-LLM / nvidia-modelopt / transformers share an environment (issue 21 item 11).

The installed TensorRT-LLM is a real distribution here: a dist-info folder put on sys.path, whose Requires-Dist
lines are TensorRT-LLM 1.2's own pins (llm_quant/upstream/trtllm_install.yaml).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tomllib

from llm_quant.upstream.install import check_environment, install_table
from quant_common.errors import QuantError
from quant_common.installed import unmet_pins, version_of

ROOT = Path(__file__).resolve().parents[2]


def _install_trtllm(site: Path, monkeypatch, version: str, requires: list[str]) -> None:
    info = site / f"tensorrt_llm-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", "Name: tensorrt_llm", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


def _pins(release: str) -> list[str]:
    row = next(p for p in install_table().pins if p.release == release)
    return [f"nvidia-modelopt[torch]{row.nvidia_modelopt}", f"transformers{row.transformers}"]


def test_trtllm_next_to_a_modelopt_it_excludes_is_refused(tmp_path, monkeypatch):
    _install_trtllm(tmp_path, monkeypatch, "1.2.1", _pins("1.2"))
    assert version_of("tensorrt_llm") == "1.2.1"
    installed = version_of("nvidia-modelopt")
    if installed is not None and installed.startswith("0.37."):
        pytest.skip("this environment has TensorRT-LLM 1.2's modelopt pin")
    with pytest.raises(QuantError, match=rf"TensorRT-LLM 1.2.1 requires nvidia-modelopt~=0.37.0 \(installed: "
                                         rf"{installed}\)") as raised:
        check_environment()
    assert "\n" not in str(raised.value) and "tensorrt-quantization[tensorrt-llm]" in str(raised.value)


def test_met_pins_pass_and_untested_pairs_are_named(tmp_path, monkeypatch):
    _install_trtllm(tmp_path, monkeypatch, "1.2.1", ["nvidia-modelopt>=0.1", "transformers>=4", "numpy<99"])
    assert unmet_pins("tensorrt_llm", ["nvidia-modelopt", "transformers"]) == []
    modelopt, transformers = version_of("nvidia-modelopt"), version_of("transformers")
    tested = {(t.nvidia_modelopt, t.transformers) for t in install_table().tested}
    warning = check_environment()
    assert (warning is None) == ((modelopt, transformers) in tested)


def test_no_trtllm_no_check():
    assert version_of("tensorrt_llm", "tensorrt-llm") is None or pytest.skip("TensorRT-LLM is installed here")
    assert check_environment() is None


def test_the_extra_installs_the_environment_row_and_rows_cite_upstream():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["tensorrt-llm"]
    env = install_table().environment
    assert extra == [f"tensorrt-llm{env.tensorrt_llm}", f"nvidia-modelopt{env.nvidia_modelopt}",
                     f"transformers{env.transformers}"]
    for pin in install_table().pins:
        assert pin.source.repo.endswith("TensorRT-LLM") and pin.source.path == "requirements.txt"
        assert pin.source.line and not pin.source.pinned
    # the environment row is the line whose modelopt pin our own floor admits
    floor = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                 if d.startswith("nvidia-modelopt"))
    assert floor == "nvidia-modelopt>=0.37"
