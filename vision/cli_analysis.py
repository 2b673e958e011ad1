"""`vision-quant eval | bench | compare | predict` (to be filled by the YOLOv8 accuracy work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
