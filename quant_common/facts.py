"""Facts read from upstream sources (TensorRT, TensorRT-LLM, Triton backends), kept as data with their source.

Every name, flag, parameter and dtype we emit for the NVIDIA stack comes from a table row that says where it was
read: repository, path, tag (or commit when no tag could be read) and line. Tables are YAML files shipped inside the
package and validated on load (``extra="forbid"``), so a typo in a table fails the test suite, not a user's build.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict

from quant_common.errors import QuantError

T = TypeVar("T", bound=BaseModel)


class Source(BaseModel):
    """Where one fact was read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str  # owner/name on GitHub
    path: str
    tag: str | None = None
    commit: str | None = None
    line: str | None = None  # "412" or "410-415"
    pinned: bool = True  # False: read at an index/main commit, not at the release tag itself
    # a versioned documentation page, where the source tree at that version could not be read (then pinned: false)
    url: str | None = None

    def cite(self) -> str:
        if self.url:
            return f"{self.url} ({self.repo} documentation, not the source tree)"
        at = self.tag or (self.commit or "?")[:12]
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{self.repo}@{at}/{where}" + ("" if self.pinned else " (not tag-pinned)")


class Fact(BaseModel):
    """Base for table rows: each carries its source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Source


@functools.cache
def _read(package: str, name: str) -> object:
    try:
        text = resources.files(package).joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise QuantError(f"fact table {package}/{name} is missing from the installed package",
                         "reinstall tensorrt-quantization") from exc
    return yaml.safe_load(text)


@functools.cache
def load_table(package: str, name: str, model: type[T]) -> T:
    """The YAML table ``name`` shipped in ``package``, validated as ``model``; read and validated once per process
    (callers ask for it per lookup; give tables ``frozen=True`` so the shared object cannot be changed)."""
    return model.model_validate(_read(package, name))
