"""CLI verbs of the loader: ``index`` and ``check-images``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
