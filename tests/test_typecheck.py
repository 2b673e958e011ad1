"""mypy over every module that calls TensorRT, against tensorrt-stubs (TensorRT itself cannot be installed here)."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("vision", "llm_quant", "triton_backend", "quant_common")


def tensorrt_modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if "import tensorrt" in text or "require(\"tensorrt\"" in text or "tensorrt as trt" in text:
                found.append(str(path.relative_to(ROOT)))
    return found


def test_tensorrt_stubs_are_installed():
    assert importlib.util.find_spec("mypy") is not None
    stubs = [p for p in sys.path if (pathlib.Path(p) / "tensorrt" / "__init__.pyi").is_file()]
    assert stubs, "tensorrt-stubs is missing: run scripts/setup.sh"


def test_mypy_tensorrt_modules_against_stubs():
    modules = tensorrt_modules()
    if not modules:
        pytest.skip("no module calls TensorRT yet")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", *modules],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
