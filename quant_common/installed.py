"""What is installed, read from package metadata only (nothing is imported): versions and unmet pins.

Used to name an installed combination in one line, e.g. TensorRT-LLM 1.2.1 next to an nvidia-modelopt its own
``requirements.txt`` does not allow (an environment where its quantization path runs a modelopt never tested
with it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def version_of(*names: str) -> str | None:
    """The installed version of the first distribution found among ``names`` (spellings of one package)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@dataclass(frozen=True)
class UnmetPin:
    package: str  # the pinned distribution, as the requirement names it
    specifier: str  # e.g. "~=0.37.0"
    installed: str | None  # None: not installed

    def describe(self) -> str:
        return f"{self.package}{self.specifier} (installed: {self.installed or 'none'})"


def unmet_pins(distribution: str, packages: Iterable[str]) -> list[UnmetPin]:
    """Requirements of the installed ``distribution`` on ``packages`` that the installed versions do not meet
    (requirements whose environment marker is false here are skipped)."""
    wanted = {canonicalize_name(p) for p in packages}
    try:
        requirements = metadata.requires(distribution) or []
    except metadata.PackageNotFoundError:
        return []
    unmet = []
    for line in requirements:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) not in wanted:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        installed = version_of(requirement.name)
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(UnmetPin(requirement.name, str(requirement.specifier), installed))
    return unmet
