"""Benchmark options that select work refuse unknown names in one line before anything runs (no GPU needed)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_scale_refuses_an_unknown_flow(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_scale.py"), "--flows", "ours,bogus",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "--flows bogus: not a flow" in last and "ours-trtllm" in last
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_small_m_sweep_refuses_unknown_shapes_and_rows(tmp_path):
    script = str(ROOT / "benchmarks" / "small_m_sweep.py")
    for argv, words in ((["--shape", "llama-99b"], "--shape llama-99b: not a known shape"),
                        (["--rows", "1,32"], "--rows 1,32: decode batch sizes are integers from 1 to 16")):
        proc = subprocess.run([sys.executable, script, *argv, "--out", str(tmp_path / "out")], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 2
        assert words in proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
