"""Benchmark options that select work refuse unknown names in one line before anything runs (no GPU needed)."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _refused(tmp_path, script, *argv):
    """(exit status, last stderr line) of ``benchmarks/<script> argv --out <tmp>/out``, which must leave no traceback
    and write nothing."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv, "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, check=False)
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    return proc.returncode, proc.stderr.strip().splitlines()[-1]


def test_gpu_scale_refuses_an_unknown_flow(tmp_path):
    status, last = _refused(tmp_path, "gpu_scale.py", "--flows", "ours,bogus")
    assert status == 2
    assert "--flows bogus: not a flow" in last and "ours-trtllm" in last


def test_small_m_sweep_refuses_unknown_shapes_and_rows(tmp_path):
    for argv, words in ((["--shape", "llama-99b"], "--shape llama-99b: not a known shape"),
                        (["--rows", "1,32"], "--rows 1,32: decode batch sizes are integers from 1 to 16")):
        status, last = _refused(tmp_path, "small_m_sweep.py", *argv)
        assert status == 2
        assert words in last


def test_llm_runtime_gpu_profile_without_a_gpu_is_one_line(tmp_path):
    status, last = _refused(tmp_path, "llm_runtime_gpu.py", "--profile", "--shapes", "llama-3.2-1b")
    assert status != 0
    assert last == "llm_runtime_gpu: no CUDA GPU visible; run it on a GPU machine"


def test_llm_runtime_gpu_unknown_runtime_is_one_line_before_any_gpu_work(tmp_path):
    status, last = _refused(tmp_path, "llm_runtime_gpu.py", "--formats", "fp8,int8_sq:scaled_mm")
    assert status == 2
    assert "unknown runtime 'int8_sq:scaled_mm'" in last


def test_llm_runtime_gpu_quantizable_bytes_leave_out_lm_head():
    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.llm_runtime_gpu import _linear_bytes

    model = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(8, 4, bias=False),
                                 "lm_head": torch.nn.Linear(8, 32, bias=False)}).to(torch.bfloat16)
    assert _linear_bytes(model) == (8 * 4 + 8 * 32) * 2
    assert _linear_bytes(model, skip=("lm_head",)) == 8 * 4 * 2


def test_llm_runtime_gpu_table_has_a_cell_per_column():
    from benchmarks.llm_runtime_gpu import table

    env = {"gpu": "g", "driver": "d", "torch": "t", "modelopt": "m"}
    base = {"shape": "s", "prefill_tok_s": 10, "decode_b1_tok_s": 2.0, "decode_b8_tok_s": 8.0, "linear_gib": 1.0}
    rows = [{**base, "runtime": "bf16 eager"},
            {**base, "runtime": "fp8", "decode_b1_tok_s_default": 1.5, "decode_b8_tok_s_default": 6.0,
             "decode_b1_tok_s_default_vs_bf16_graph": 1.1, "decode_b8_tok_s_default_vs_bf16_graph": 1.2,
             "argmax_agree": 0.9, "max_logit_diff": 0.1, "kernels": "k"}]
    text = table({"environment": env, "rows": rows, "prefill": 8, "new_tokens": 4, "max_len": 2048})
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in lines}) == 1, lines
    assert "1.5 / 6.0 (1.1 / 1.2)" in lines[-1]
    assert "max_len 2048" in text


def test_gpu_scale_refuses_a_child_timeout_that_is_not_a_positive_number(tmp_path):
    for value, words in (("0", "--child-timeout 0: give a number of seconds above 0"),
                         ("soon", "argument --child-timeout: invalid float value: 'soon'")):
        status, last = _refused(tmp_path, "gpu_scale.py", "--child-timeout", value)
        assert status == 2
        assert words in last


def test_gpu_scale_records_a_flow_that_runs_over_its_limit(tmp_path):
    """A flow past --child-timeout becomes a row saying so (the call goes on to the next flow) instead of an
    exception that loses the rows before it."""
    import argparse

    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_scale import _run_child

    args = argparse.Namespace(calib_size=1, calib_seq_len=8, child_timeout=0.05)
    row = _run_child("ours", tmp_path / "no-model", tmp_path / "work", "fp8", args)
    assert row["error"] == "timed out after 0.05 s"
    assert not (tmp_path / "work").exists()


def test_int8_prefill_gpu_refuses_bad_rows_and_shapes_in_one_line(tmp_path):
    for argv, words in ((["--rows", "8,2048"], "--rows: prefill row counts must be above 16"),
                        (["--rows", "many"], "--rows: 'many' is not a comma-separated list"),
                        (["--shape", "llama-99b"], "--shape: unknown shape 'llama-99b'")):
        status, last = _refused(tmp_path, "int8_prefill_gpu.py", *argv)
        assert status == 2
        assert words in last


def test_int8_prefill_gpu_layer_and_table():
    from benchmarks.int8_prefill_gpu import GROUPS, _layer_weights, chart, table
    from llm_quant.model import tiny

    dims = _layer_weights(tiny.SHAPES["llama-3.1-8b"])
    assert dims == {"q": (4096, 4096), "k": (1024, 4096), "v": (1024, 4096), "o": (4096, 4096),
                    "gate": (14336, 4096), "up": (14336, 4096), "down": (4096, 14336)}
    assert sorted(n for names in GROUPS.values() for n in names) == sorted(dims)
    for names in GROUPS.values():  # linears of a group read one input: the same in_features
        assert len({dims[n][1] for n in names}) == 1
    result = {"environment": {"gpu": "g", "driver": "d", "torch": "t"}, "shape": "s",
              "rows": [{"rows": 512, "path": "bf16", "ms": 1.0, "x_bf16": 1.0},
                       {"rows": 512, "path": "triton", "ms": 0.5, "x_bf16": 2.0, "max_rel_error": 1e-7},
                       {"rows": 512, "path": "int_mm", "error": "RuntimeError: no kernel"}]}
    lines = [line for line in table(result).splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in lines}) == 1, lines
    assert "| 512 | triton | 0.5 | 2.0 | 1.00e-07 |  |" in lines
    assert chart(result).startswith(b"\x89PNG")
