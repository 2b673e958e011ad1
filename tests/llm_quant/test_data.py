"""Calibration text sources and the held-out split."""

from __future__ import annotations

import json

import pytest

from llm_quant.config import CalibConfig
from llm_quant.data import documents
from quant_common.errors import QuantError


def test_splits_are_disjoint_and_deterministic():
    docs = documents.builtin_corpus()
    assert len(docs) >= 50
    splits = {s: [i for i in range(len(docs)) if documents.split_of(i) == s] for s in ("calib", "search", "eval")}
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
    docs = documents.load_documents(CalibConfig(files=[tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.parquet"]))
    assert docs == ["first paragraph", "second paragraph", "third", "fourth", "fifth", "sixth"]


def test_bad_local_files(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(QuantError, match="unsupported type"):
        documents.load_documents(CalibConfig(files=[tmp_path / "x.csv"]))
    (tmp_path / "n.jsonl").write_text(json.dumps({"body": "no text column"}) + "\n")
    with pytest.raises(QuantError, match="no 'text' column"):
        documents.load_documents(CalibConfig(files=[tmp_path / "n.jsonl"]))
    with pytest.raises(QuantError, match="does not exist"):
        documents.load_documents(CalibConfig(files=[tmp_path / "missing.txt"]))


def test_unreachable_named_dataset(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(QuantError, match="cannot load calibration dataset 'no-org/no-dataset'"):
        documents.load_documents(CalibConfig(dataset="no-org/no-dataset"))


def test_calibration_batches_shape(tiny_llama):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_llama))
    stream = documents.tokenize_split(documents.builtin_corpus(), tok, "calib")
    batches = documents.calibration_batches(stream, CalibConfig(size=5, seq_len=32, batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 32), (2, 32), (1, 32)]
    short = documents.TokenStream(stream.ids[:10])
    with pytest.raises(QuantError, match="fewer than 32 tokens"):
        documents.calibration_batches(short, CalibConfig(size=5, seq_len=32))


def test_mixed_text_set_loads_and_splits_deterministically():
    domains = {d: documents.corpus_domain(d) for d in (*documents.MIXED_DOMAINS, documents.HELDOUT_DOMAIN)}
    assert all(len(docs) >= 10 for docs in domains.values())
    docs = documents.mixed_corpus()
    assert docs == documents.mixed_corpus() and len(docs) == sum(len(domains[d]) for d in documents.MIXED_DOMAINS)
    assert docs[:3] == [domains[d][0] for d in documents.MIXED_DOMAINS]  # interleaved: every prefix is mixed
    assert not set(domains[documents.HELDOUT_DOMAIN]) & set(docs)  # dialogue is in no split
    calib = CalibConfig(dataset="mixed")
    assert documents.load_documents(calib) == docs and documents.search_slots(calib) == 3
    splits = {s: [d for i, d in enumerate(docs) if documents.split_of(i, 3) == s] for s in ("calib", "search", "eval")}
    assert abs(len(splits["search"]) - 3 * len(splits["eval"])) <= 3 and len(splits["calib"]) > len(splits["search"])
    for domain in documents.MIXED_DOMAINS:  # each domain reaches the search and the eval split
        assert set(domains[domain]) & set(splits["search"]) and set(domains[domain]) & set(splits["eval"])
    assert not (set(splits["eval"]) & set(splits["search"])) and not (set(splits["eval"]) & set(splits["calib"]))
    label, held = documents.heldout_text(calib)
    assert held == domains[documents.HELDOUT_DOMAIN] and documents.HELDOUT_DOMAIN in label
    assert documents.heldout_text(CalibConfig(dataset="pydoc")) is None
    assert documents.describe_split(calib, "search") == "mixed (prose/code/technical), search split"


def test_corpus_sources_are_stated():
    from importlib import resources

    sources = resources.files("llm_quant.data").joinpath("corpus", "SOURCES.md").read_text(encoding="utf-8")
    for domain in (*documents.MIXED_DOMAINS, documents.HELDOUT_DOMAIN):
        row = next(line for line in sources.splitlines() if line.startswith(f"| `{domain}.txt`"))
        assert "license" in row.lower() or "License" in row, domain
