"""Calibration text sources and the held-out split."""

from __future__ import annotations

import json

import pytest

from llm_quant import data
from llm_quant.config import CalibConfig
from quant_common.errors import QuantError


def test_splits_are_disjoint_and_deterministic():
    docs = data.builtin_corpus()
    assert len(docs) >= 50
    splits = {s: [i for i in range(len(docs)) if data.split_of(i) == s] for s in ("calib", "search", "eval")}
    assert set(splits["eval"]).isdisjoint(splits["calib"]) and set(splits["eval"]).isdisjoint(splits["search"])
    assert set(splits["search"]).isdisjoint(splits["calib"])
    assert sum(len(v) for v in splits.values()) == len(docs) and splits["eval"]


def test_local_txt_jsonl_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("first paragraph\n\nsecond paragraph\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["third", "fourth"]) + "\n")
    pq.write_table(pa.table({"text": ["fifth", "sixth"]}), tmp_path / "c.parquet")
    docs = data.load_documents(CalibConfig(files=[tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.parquet"]))
    assert docs == ["first paragraph", "second paragraph", "third", "fourth", "fifth", "sixth"]


def test_bad_local_files(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(QuantError, match="unsupported type"):
        data.load_documents(CalibConfig(files=[tmp_path / "x.csv"]))
    (tmp_path / "n.jsonl").write_text(json.dumps({"body": "no text column"}) + "\n")
    with pytest.raises(QuantError, match="no 'text' column"):
        data.load_documents(CalibConfig(files=[tmp_path / "n.jsonl"]))
    with pytest.raises(QuantError, match="does not exist"):
        data.load_documents(CalibConfig(files=[tmp_path / "missing.txt"]))


def test_unreachable_named_dataset(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(QuantError, match="cannot load calibration dataset 'no-org/no-dataset'"):
        data.load_documents(CalibConfig(dataset="no-org/no-dataset"))


def test_calibration_batches_shape(tiny_llama):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    stream = data.tokenize_split(data.builtin_corpus(), tok, "calib")
    batches = data.calibration_batches(stream, CalibConfig(size=5, seq_len=32, batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 32), (2, 32), (1, 32)]
    short = data.TokenStream(stream.ids[:10])
    with pytest.raises(QuantError, match="fewer than 32 tokens"):
        data.calibration_batches(short, CalibConfig(size=5, seq_len=32))
