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


def test_llm_runtime_gpu_profile_without_a_gpu_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "llm_runtime_gpu.py"), "--profile",
                           "--shapes", "llama-3.2-1b", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "llm_runtime_gpu: no CUDA GPU visible; run it on a GPU machine"
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_llm_runtime_gpu_quantizable_bytes_leave_out_lm_head():
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.llm_runtime_gpu import _linear_bytes

    model = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(8, 4, bias=False),
                                 "lm_head": torch.nn.Linear(8, 32, bias=False)}).to(torch.bfloat16)
    assert _linear_bytes(model) == (8 * 4 + 8 * 32) * 2
    assert _linear_bytes(model, skip=("lm_head",)) == 8 * 4 * 2
