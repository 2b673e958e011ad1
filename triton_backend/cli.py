"""`llm-quant package | serve | generate` (to be filled by the Triton work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
