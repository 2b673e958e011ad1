"""mypy over every module that calls TensorRT, against tensorrt-stubs (TensorRT itself cannot be installed here).

tensorrt-stubs 10.13.0.35.1 has two syntax errors in ``tensorrt_bindings/tensorrt.pyi`` (parameters named ``in``
and a non-default ``channel_axis`` after defaulted ones). mypy then silently treats all of ``tensorrt`` as ``Any``,
so nothing would be checked. We copy the stubs, repair those two spots, and point MYPYPATH at the copy.
A canary module with a wrong TensorRT attribute proves the stubs are really in force.
"""

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("vision", "llm_quant", "triton_backend", "quant_common")

CANARY = '''\
import tensorrt as trt


def flags(config: trt.IBuilderConfig) -> None:
    config.set_flag(trt.BuilderFlag.NOT_A_REAL_FLAG)
'''


# Checked whether or not they import tensorrt: every backend (their contracts meet TensorRT's) and the modules
# rendering TensorRT facts from the fact tables.
ALWAYS = ("vision/backends", "vision/artifacts/trtexec.py", "vision/artifacts/cache.py", "llm_quant/export/engine.py",
          "llm_quant/upstream")


def tensorrt_modules() -> list[str]:
    found = [str(p.relative_to(ROOT)) for entry in ALWAYS
             for p in ([ROOT / entry] if entry.endswith(".py") else sorted((ROOT / entry).rglob("*.py")))]
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            if re.search(r"^\s*(import tensorrt\b|from tensorrt\b)", text, re.MULTILINE):
                found.append(str(path.relative_to(ROOT)))
    return sorted(set(found))


def _installed_stub_root() -> pathlib.Path:
    for entry in sys.path:
        if (pathlib.Path(entry) / "tensorrt" / "__init__.pyi").is_file():
            return pathlib.Path(entry)
    pytest.fail("tensorrt-stubs is missing: run scripts/setup.sh")


@pytest.fixture(scope="module")
def repaired_stubs(tmp_path_factory) -> pathlib.Path:
    source = _installed_stub_root()
    target = tmp_path_factory.mktemp("trt-stubs")
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(source / package, target / package)
    bindings = target / "tensorrt_bindings" / "tensorrt.pyi"
    text = bindings.read_text(encoding="utf-8")
    text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", text)  # `in` is a keyword: not a valid parameter name
    text = re.sub(r"channel_axis: int\)", "channel_axis: int = ...)", text)
    bindings.write_text(text, encoding="utf-8")
    return target


def run_mypy(stubs: pathlib.Path, targets: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    config = stubs / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.11\nignore_missing_imports = True\nfollow_imports = silent\n"
        "[mypy-tensorrt.*]\nignore_errors = True\n[mypy-tensorrt_bindings.*]\nignore_errors = True\n"
    )
    env = dict(os.environ, MYPYPATH=str(stubs))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--config-file", str(config), *targets],
        cwd=cwd, capture_output=True, text=True, check=False, env=env,
    )


def test_tensorrt_stubs_are_installed():
    assert importlib.util.find_spec("mypy") is not None
    _installed_stub_root()


def test_stubs_catch_a_wrong_tensorrt_call(repaired_stubs, tmp_path):
    (tmp_path / "canary.py").write_text(CANARY)
    proc = run_mypy(repaired_stubs, ["canary.py"], tmp_path)
    assert proc.returncode != 0 and "NOT_A_REAL_FLAG" in proc.stdout, proc.stdout + proc.stderr


def test_mypy_tensorrt_modules_against_stubs(repaired_stubs):
    modules = tensorrt_modules()
    assert modules, "expected at least vision/backends/trt.py to import tensorrt"
    proc = run_mypy(repaired_stubs, modules, ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_packages_type_check(tmp_path):
    """The whole of every package, and the benchmarks users run, under the project's own mypy settings
    (pyproject.toml, pydantic's plugin); the benchmarks are scripts in a folder without ``__init__``, so their
    module names come from the project root (``--explicit-package-bases``)."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
                           "--explicit-package-bases", *PACKAGES, "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
