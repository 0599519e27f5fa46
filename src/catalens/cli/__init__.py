"""The command-line layer (Typer + Rich): commands, report tables, ``doctor`` and ``demo``.

The top layer: may import anything in catalens; nothing imports it."""

from catalens.cli.commands import app, main

__all__ = ["app", "main"]
