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


def test_mixed_text_set_loads_and_splits_deterministically():
    domains = {d: data.corpus_domain(d) for d in (*data.MIXED_DOMAINS, data.HELDOUT_DOMAIN)}
    assert all(len(docs) >= 10 for docs in domains.values())
    docs = data.mixed_corpus()
    assert docs == data.mixed_corpus() and len(docs) == sum(len(domains[d]) for d in data.MIXED_DOMAINS)
    assert docs[:3] == [domains[d][0] for d in data.MIXED_DOMAINS]  # interleaved: every prefix is mixed
    assert not set(domains[data.HELDOUT_DOMAIN]) & set(docs)  # dialogue is in no split
    calib = CalibConfig(dataset="mixed")
    assert data.load_documents(calib) == docs and data.search_slots(calib) == 3
    splits = {s: [d for i, d in enumerate(docs) if data.split_of(i, 3) == s] for s in ("calib", "search", "eval")}
    assert abs(len(splits["search"]) - 3 * len(splits["eval"])) <= 3 and len(splits["calib"]) > len(splits["search"])
    for domain in data.MIXED_DOMAINS:  # each domain reaches the search and the eval split
        assert set(domains[domain]) & set(splits["search"]) and set(domains[domain]) & set(splits["eval"])
    assert not (set(splits["eval"]) & set(splits["search"])) and not (set(splits["eval"]) & set(splits["calib"]))
    label, held = data.heldout_text(calib)
    assert held == domains[data.HELDOUT_DOMAIN] and data.HELDOUT_DOMAIN in label
    assert data.heldout_text(CalibConfig(dataset="pydoc")) is None
    assert data.describe_split(calib, "search") == "mixed (prose/code/technical), search split"


def test_corpus_sources_are_stated():
    from importlib import resources

    sources = resources.files("llm_quant").joinpath("corpus", "SOURCES.md").read_text(encoding="utf-8")
    for domain in (*data.MIXED_DOMAINS, data.HELDOUT_DOMAIN):
        row = next(line for line in sources.splitlines() if line.startswith(f"| `{domain}.txt`"))
        assert "license" in row.lower() or "License" in row, domain
