"""User-facing errors and the one helper that imports optional dependencies.

Library code raises ``QuantError`` for anything a user can fix (bad file, unknown option, missing
dependency). CLIs turn it into one line and a non-zero exit; the library itself never prints or exits.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


class QuantError(Exception):
    """A problem the user can fix. ``str()`` is one line: what is wrong, then how to fix it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(fix.split()) if fix else None
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class MissingDependencyError(QuantError):
    """An optional dependency (TensorRT, TensorRT-LLM, tritonclient, ...) is not importable."""

    exit_code = 3


def require(module: str, *, purpose: str, install: str | None = None) -> ModuleType:
    """Import ``module`` or raise one clear line saying what needs it and how to get it.

    Never installs anything: installing mid-run is the Ultralytics exporter habit we avoid.
    """
    try:
        loaded = importlib.import_module(module)
        _reject_stub_only(loaded)
        return loaded
    except ImportError as exc:  # also catches a package whose native libraries are missing
        hint = install or f"pip install {module.split('.')[0]}"
        raise MissingDependencyError(
            f"{purpose} needs the Python module '{module}', which cannot be imported ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'not found'})",
            f"install it ({hint}) or choose another option",
        ) from exc


def _reject_stub_only(loaded: ModuleType) -> None:
    """Type-stub packages (``tensorrt-stubs`` ships ``tensorrt/__init__.pyi`` alone) import as empty namespace
    packages; treat them as not installed rather than failing later on a missing attribute."""
    if getattr(loaded, "__file__", None) is None and getattr(loaded, "__path__", None) is not None:
        locations = list(loaded.__path__)
        has_code = any(
            child.suffix in {".py", ".so", ".pyd"} for loc in locations for child in Path(loc).iterdir()
        )
        if not has_code:
            raise ImportError(f"only type stubs of '{loaded.__name__}' are installed (no implementation)")


def is_importable(module: str) -> bool:
    """True when ``module`` imports cleanly with a real implementation (used for ``--backend auto``)."""
    try:
        _reject_stub_only(importlib.import_module(module))
    except Exception:  # noqa: BLE001 - a half-installed TensorRT raises OSError/RuntimeError too
        return False
    return True
