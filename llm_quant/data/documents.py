"""Calibration and evaluation text -> token tensors, with a deterministic three-way document split.

Documents are assigned by index: every 10th goes to ``eval`` (held out from everything else), the next to
``search`` (accuracy-budget search), the rest to ``calib``. Calibration therefore never sees the text perplexity is
reported on, and the budget search never sees it either.

The offline default, ``mixed`` (``llm_quant/data/corpus``, sources and licenses in its SOURCES.md), interleaves
prose, Python code and technical documentation paragraph by paragraph, so every split and every calibration prefix
holds all three; a fourth domain, dialogue, is in no split: it is the ``heldout`` text, a domain neither
calibration nor the search saw, on which a budget is reported (searching and evaluating on one domain let budgets
fail on others).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llm_quant.config import CalibConfig
from quant_common.errors import QuantError, require

Split = Literal["calib", "search", "eval"]
MIXED_DOMAINS = ("prose", "code", "technical")  # calibration, search and eval splits
HELDOUT_DOMAIN = "dialogue"  # reported on only
OFFLINE_DATASETS = ("mixed", "pydoc")
LOCAL_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Named hub datasets we know the text column of; any other name needs a 'text' column.
KNOWN_DATASETS = {"cnn_dailymail": ("abisee/cnn_dailymail", "3.0.0", "article")}


def split_of(index: int, search_slots: int = 1) -> Split:
    """``eval`` for every 10th document, ``search`` for the ``search_slots`` after it, ``calib`` for the rest."""
    slot = index % 10
    return "eval" if slot == 0 else "search" if slot <= search_slots else "calib"


def search_slots(calib: CalibConfig) -> int:
    """The small bundled ``mixed`` set gives the search 3 in 10 documents (~3.5 k tokens with SmolLM2's tokenizer;
    1 in 10 left it one 512-token window), calibration keeps 6 in 10 (~7 k tokens, over the preset's 4 k)."""
    return 3 if calib.dataset == "mixed" and not calib.files else 1


def corpus_domain(domain: str) -> list[str]:
    """The paragraphs of one bundled domain file (``llm_quant/data/corpus/<domain>.txt``)."""
    from importlib import resources

    try:
        text = resources.files("llm_quant.data").joinpath("corpus", f"{domain}.txt").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise QuantError(f"the bundled text llm_quant/data/corpus/{domain}.txt is missing",
                         "reinstall tensorrt-quantization") from exc
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def mixed_corpus() -> list[str]:
    """Prose, code and technical paragraphs interleaved round-robin (deterministic), dialogue left out."""
    domains = [corpus_domain(d) for d in MIXED_DOMAINS]
    return [docs[i] for i in range(max(map(len, domains))) for docs in domains if i < len(docs)]


def heldout_text(calib: CalibConfig) -> tuple[str, list[str]] | None:
    """(description, documents) of a domain calibration and search never see; None when the data has none."""
    if calib.files or calib.dataset != "mixed":
        return None
    return (f"{HELDOUT_DOMAIN} (bundled domain unseen by calibration and search)", corpus_domain(HELDOUT_DOMAIN))


def describe_split(calib: CalibConfig, split: Split) -> str:
    """Which text a number is on, for build.json and --json."""
    source = ", ".join(str(f) for f in calib.files) if calib.files else \
        f"mixed ({'/'.join(MIXED_DOMAINS)})" if calib.dataset == "mixed" else calib.dataset
    return f"{source}, {split} split"


def builtin_corpus() -> list[str]:
    """Offline default: Python's bundled documentation topics (79 English documents, ~465 k characters)."""
    import pydoc_data.topics as topics

    return [topics.topics[key] for key in sorted(topics.topics)]


def _datasets() -> Any:
    return require("datasets", purpose="reading calibration text", install="pip install 'datasets<5'")


def load_local_documents(files: list[Path]) -> list[str]:
    docs: list[str] = []
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise QuantError(f"calibration file {path} does not exist", "pass existing txt/jsonl/parquet files")
        kind = LOCAL_FORMATS.get(path.suffix.lower())
        if kind is None:
            raise QuantError(f"calibration file {path} has unsupported type {path.suffix!r}",
                             "use .txt, .jsonl or .parquet")
        if kind == "text":  # paragraphs (blank-line separated) are the documents
            text = path.read_text(encoding="utf-8", errors="replace")
            docs.extend(p.strip() for p in text.split("\n\n") if p.strip())
            continue
        try:
            table = _datasets().load_dataset(kind, data_files=str(path), split="train")
        except Exception as exc:  # noqa: BLE001 - corrupt file: one line
            raise QuantError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}",
                             "check the file's format") from exc
        if "text" not in table.column_names:
            raise QuantError(f"{path} has no 'text' column (columns: {', '.join(table.column_names)})",
                             "store the documents in a column named 'text'")
        docs.extend(str(t) for t in table["text"] if t and str(t).strip())
    return docs


def load_named_dataset(name: str, limit: int) -> list[str]:
    datasets = _datasets()
    repo, config, column = KNOWN_DATASETS.get(name, (name, None, "text"))
    try:
        stream = datasets.load_dataset(repo, config, split="train", streaming=True)
        docs = []
        for row in stream:
            if row.get(column):
                docs.append(str(row[column]))
            if len(docs) >= limit:
                break
    except Exception as exc:  # noqa: BLE001 - offline, missing or gated: one line for all
        raise QuantError(f"cannot load calibration dataset {name!r} ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else 'unreachable'})",
                         "use --calib-dataset mixed or pydoc (offline) or --calib-file with local text") from exc
    return docs


def load_documents(calib: CalibConfig) -> list[str]:
    if calib.files:
        docs = load_local_documents(calib.files)
    elif calib.dataset == "pydoc":
        docs = builtin_corpus()
    elif calib.dataset == "mixed":
        docs = mixed_corpus()
    else:  # enough documents for calib + held-out splits
        docs = load_named_dataset(calib.dataset, limit=max(10 * calib.size, 200))
    if not docs:
        raise QuantError("the calibration data is empty", "pass files or a dataset with text in them")
    return docs


@dataclass
class TokenStream:
    """All tokens of one split, concatenated with EOS between documents."""

    ids: Any  # torch.LongTensor [n]

    def windows(self, seq_len: int, limit: int | None = None, max_tokens: int | None = None) -> Any:
        """Non-overlapping windows [k, seq_len] from the start (deterministic)."""
        n = len(self.ids) // seq_len
        if max_tokens is not None:
            n = min(n, max(1, max_tokens // seq_len))
        if limit is not None:
            n = min(n, limit)
        return self.ids[: n * seq_len].view(n, seq_len)


def tokenize_split(docs: list[str], tokenizer: Any, split: Split, search_slots: int = 1) -> TokenStream:
    chosen = [d for i, d in enumerate(docs) if split_of(i, search_slots) == split] if len(docs) >= 10 else \
        _small_corpus_split(docs, split)
    return tokenize_documents(chosen, tokenizer)


def tokenize_documents(docs: list[str], tokenizer: Any) -> TokenStream:
    torch = require("torch", purpose="tokenizing text")
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if sep is not None:
            ids.append(sep)
    return TokenStream(torch.tensor(ids, dtype=torch.long))


def _small_corpus_split(docs: list[str], split: Split) -> list[str]:
    """Fewer than 10 documents: split each document's text by position (80/10/10) instead."""
    out = []
    for doc in docs:
        a, b = int(len(doc) * 0.8), int(len(doc) * 0.9)
        out.append({"calib": doc[:a], "search": doc[a:b], "eval": doc[b:]}[split])
    return [d for d in out if d.strip()]


def calibration_batches(stream: TokenStream, calib: CalibConfig) -> list[Any]:
    windows = stream.windows(calib.seq_len, limit=calib.size)
    if len(windows) == 0:
        raise QuantError(f"the calibration text has fewer than {calib.seq_len} tokens",
                         "add calibration text or lower --calib-seq-len")
    return list(windows.split(calib.batch_size))


def calibration_counts(stream: TokenStream, batches: list[Any], calib: CalibConfig) -> dict[str, Any]:
    """What calibration actually consumes: whole ``seq_len`` windows of the calib split, at most ``size`` of them
    (a shorter text gives fewer, silently in most tools; here it is reported)."""
    samples = sum(len(batch) for batch in batches)
    text_tokens = len(stream.ids)
    return {"requested_samples": calib.size, "samples": samples, "seq_len": calib.seq_len,
            "tokens": samples * calib.seq_len, "text_tokens": text_tokens,
            "unused_tokens": text_tokens - samples * calib.seq_len, "capped_by_text": samples < calib.size}


def iterate_batches(batches: list[Any], device: str) -> Iterator[Any]:
    for batch in batches:
        yield batch.to(device)


def read_text_file(path: Path) -> list[str]:
    """``eval --text FILE``: the whole file is held-out text (split into paragraphs)."""
    docs = load_local_documents([path])
    if not docs:
        raise QuantError(f"{path} holds no text", "pass a file with text to evaluate on")
    return docs
