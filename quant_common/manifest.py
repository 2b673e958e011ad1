"""Facts recorded in every ``build.json``: hashes, package versions, timings."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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

