import pytest

from quant_common.cli import handle_errors
from quant_common.errors import MissingDependencyError, QuantError, is_importable, require


def test_require_missing_module_is_one_clear_line():
    with pytest.raises(MissingDependencyError) as info:
        require("definitely_not_a_module_xyz", purpose="Building a TensorRT engine", install="pip install foo")
    text = str(info.value)
    assert "\n" not in text and "Building a TensorRT engine" in text and "pip install foo" in text


def test_tensorrt_is_not_faked():
    # TensorRT cannot be installed here; make sure nothing in the test environment pretends it is.
    # tensorrt-stubs installs tensorrt/__init__.pyi, which imports as an empty namespace package.
    if is_importable("tensorrt"):
        pytest.skip("a real TensorRT is installed on this machine")
    with pytest.raises(MissingDependencyError, match="stubs|cannot be imported"):
        require("tensorrt", purpose="x")


def test_handle_errors_prints_one_line_and_exits(capsys):
    @handle_errors
    def broken():
        raise QuantError("model.onnx is truncated", "re-export it")

    with pytest.raises(SystemExit) as exit_info:
        broken()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: model.onnx is truncated — re-export it\n"


def test_handle_errors_hides_unexpected_traceback(capsys):
    @handle_errors
    def crash():
        raise ZeroDivisionError("division by zero")

    with pytest.raises(SystemExit) as exit_info:
        crash()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
