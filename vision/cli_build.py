"""`vision-quant build` (to be filled by the vision core work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
