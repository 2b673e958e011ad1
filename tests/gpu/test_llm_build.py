"""Every qformat x KV-cache combination built on CUDA, loaded by the embedded runtime and generating on CUDA;
what the card cannot run is refused in one line before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm_quant.model import preflight
from llm_quant.pipeline import build, evaluate, make_config
from llm_quant.runtime import load_quantized
from llm_quant.upstream import expected_algorithms
from quant_common import qformats
from quant_common.errors import QuantError

CALIB = {"size": 8, "seq_len": 128, "batch_size": 4}
EVAL = {"seq_len": 128, "max_tokens": 2048}
COMBOS = [(q, kv) for q in qformats.QFORMAT_NAMES for kv in (None, *qformats.KV_NAMES)
          if not (q == "full_prec" and kv is not None)]


def _config(model, out, **overrides):
    return make_config(str(model), overrides={"out": out, "device": "cuda", "build_engine": False, **overrides},
                       calib=CALIB, eval_opts=EVAL)[0]


def _refusal(qformat, kv, sm):
    return preflight.format_problem(qformat, sm) or (kv and preflight.format_problem(f"kv:{kv}", sm))


@pytest.mark.parametrize(("qformat", "kv"), COMBOS, ids=[f"{q}-{kv or 'nokv'}" for q, kv in COMBOS])
def test_build_load_generate_on_cuda(qformat, kv, gpu_llama, sm, tmp_path):
    import torch

    out = tmp_path / "build"
    if _refusal(qformat, kv, sm):
        with pytest.raises(QuantError) as refused:
            build(_config(gpu_llama, out, qformat=qformat, kv_cache_dtype=kv))
        assert "\n" not in str(refused.value) and "SM" in str(refused.value)
        assert not out.exists()
        return
    cfg = _config(gpu_llama, out, qformat=qformat, kv_cache_dtype=kv)
    assert cfg.dtype == "bfloat16"  # the model's own dtype, not the old float16 default
    result = build(cfg)
    checkpoint = json.loads((out / "trtllm_checkpoint" / "config.json").read_text())
    assert checkpoint["dtype"] == "bfloat16"
    assert (result.quant_algo, result.kv_cache_quant_algo) == expected_algorithms(qformat, kv, cfg.sq_activations)
    manifest = json.loads((out / "build.json").read_text())
    assert manifest["preflight"]["device"] == "cuda" and manifest["preflight"]["sm"] == sm
    model, tokenizer = load_quantized(out / "embedded", device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    ids = torch.tensor([tokenizer.encode("The quick brown fox")], device="cuda")
    with torch.inference_mode():
        logits = model(ids).logits
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert torch.isfinite(logits).all()
    assert generated.shape == (1, ids.shape[1] + 8)


def test_cli_refuses_what_the_card_cannot_run_in_one_line(gpu_llama, sm, tmp_path):
    refused = [(q, kv) for q, kv in COMBOS if _refusal(q, kv, sm)]
    if not refused:
        pytest.skip(f"SM {sm}: every qformat and KV cache runs on this card")
    qformat, kv = refused[0]
    out = tmp_path / "refused"
    argv = [sys.executable, "-m", "llm_quant.cli", "build", "--model-path", str(gpu_llama), "--qformat", qformat,
            "--device", "cuda", "--no-engine", "--out", str(out)] + (["--kv-cache-dtype", kv] if kv else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SM" in lines[0] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not out.exists()


def test_preflight_refuses_a_model_larger_than_the_gpu(tmp_path):
    """A 70B-shaped checkpoint header (no weights on disk: only the safetensors header is read)."""
    import struct

    import torch

    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))
    free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    rows = int(free // (8192 * 2)) + 1  # one bf16 tensor larger than all free GPU memory
    header = json.dumps({"w": {"dtype": "BF16", "shape": [rows, 8192], "data_offsets": [0, 0]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(QuantError, match="GiB at bfloat16"):
        preflight.preflight(folder, "fp8", None, device="cuda", load_dtype="bfloat16")


def test_eval_and_accuracy_budget_on_cuda(gpu_llama, tmp_path):
    cfg = _config(gpu_llama, tmp_path / "eval", qformat="fp8", accuracy_budget=50.0)
    report = evaluate(cfg).to_dict()
    assert report["qformat"] == "fp8" and report["windows"] > 0
    assert report["ppl_ref"] > 0 and report["ppl_quant"] > 0
    assert 0.0 < report["quantized_weight_share"] <= 1.0
    assert report["search"] is not None and report["search"]["met"] in (True, False)
