"""Every module imports without the optional NVIDIA runtimes, and every CLI answers --help."""

import importlib
import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("vision", "llm_quant", "triton_backend", "quant_common")
# Python-backend model files run inside Triton's stub, where triton_python_backend_utils exists.
SKIP_PARTS = {"models", "assets"}
# Triton kernels import triton itself, which comes with CUDA builds of torch only (kernels.py imports them on use).
NEEDS_TRITON = {"llm_quant.runtime.cuda.triton_kernels"}
HAS_TRITON = importlib.util.find_spec("triton") is not None


def all_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            if SKIP_PARTS & set(rel.parts):
                continue
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


@pytest.mark.parametrize("module", all_modules())
def test_module_imports_without_tensorrt(module):
    if module in NEEDS_TRITON and not HAS_TRITON:
        pytest.skip("imports triton, which comes with CUDA builds of torch (tests/gpu covers it)")
    importlib.import_module(module)


@pytest.mark.parametrize("script", ["vision-quant", "llm-quant"])
def test_cli_help(script):
    exe = pathlib.Path(sys.executable).with_name(script)
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout and "Traceback" not in proc.stderr
