"""Facts recorded in every ``build.json``: hashes, package versions, timings."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """:func:`sha256_file` of each path, in order, several at once: hashlib releases the GIL while it hashes (six
    200 MB files: 0.78 s one by one, 0.59 s here on 2 cores; hashing took 3.5 s of a 1B-shaped fp8 build on the GPU
    box, one file after another)."""
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1, 8))) as pool:
        return list(pool.map(sha256_file, paths))


def tree_hashes(tree: Path, suffixes: set[str], max_bytes: int = 2**31) -> dict[str, str]:
    """sha256 of the files under ``tree`` with these suffixes, keyed by relative path; files of ``max_bytes`` and
    more are left out (an 8B model's rank file takes minutes to hash)."""
    files = [p for p in sorted(tree.rglob("*")) if p.is_file() and p.suffix in suffixes and p.stat().st_size < max_bytes]
    return {str(p.relative_to(tree)): digest for p, digest in zip(files, sha256_files(files), strict=True)}


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed distribution versions (None where absent), plus Python and platform."""
    versions: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class Timings(dict[str, float]):
    """Named wall-clock durations in seconds: ``with timings.measure("calibrate"): ...``."""

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 4)

