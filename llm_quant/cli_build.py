"""`llm-quant build | eval` (to be filled by the LLM pipeline work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
