import json
import os

import pytest

from quant_common.atomic import atomic_write_json, ensure_output_dir, publish, staged_dir, staged_file
from quant_common.errors import QuantError


def test_staged_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with staged_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]  # no temporary left behind
    with staged_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


def test_staged_dir_swaps_whole_directory(tmp_path):
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "old_only").write_text("x")
    with pytest.raises(ValueError):
        with staged_dir(dest) as tmp:
            (tmp / "new").write_text("y")
            raise ValueError
    assert (dest / "old_only").exists() and not (dest / "new").exists()
    with staged_dir(dest) as tmp:
        (tmp / "new").write_text("y")
    assert (dest / "new").exists() and not (dest / "old_only").exists()
    assert sorted(os.listdir(tmp_path)) == ["repo"]


def test_atomic_json_roundtrip(tmp_path):
    path = atomic_write_json(tmp_path / "x.json", {"a": 1, "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path)}


def test_ensure_output_dir_rejects_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(QuantError, match="not a directory"):
        ensure_output_dir(f)
    with pytest.raises(QuantError):
        ensure_output_dir(f / "sub")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_ensure_output_dir_rejects_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(QuantError, match="not writable"):
            ensure_output_dir(ro)
    finally:
        ro.chmod(0o700)


def test_outputs_get_the_users_usual_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        with staged_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with staged_dir(tmp_path / "d") as tmp:
            (tmp / "inner").write_text("y")
    finally:
        os.umask(previous)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_publish_moves_files_and_replaces_directories_whole(tmp_path):
    staging = tmp_path / "staging"
    (staging / "report").mkdir(parents=True)
    (staging / "report" / "new.html").write_text("new")
    (staging / "model.onnx").write_text("m")
    out = tmp_path / "out"
    (out / "report").mkdir(parents=True)
    (out / "report" / "old.html").write_text("old")
    assert publish(staging / "model.onnx", out / "model.onnx").read_text() == "m"
    publish(staging / "report", out / "report")
    assert sorted(os.listdir(out / "report")) == ["new.html"]
    assert sorted(os.listdir(out)) == ["model.onnx", "report"]  # nothing left beside the outputs
    assert os.listdir(staging) == []
