"""The ``catalens`` command line: a thin Typer layer over ``CatalensService``.

Every command builds the service from settings, calls it, and prints. Library errors become
one red line on stderr and exit status 1. The commands live in ``collection_commands``,
``eval_command`` and ``setup_commands``; this module registers them on one app, in the
order ``--help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from catalens.cli.base import err
from catalens.cli.collection_commands import collections, delete, feedback, ingest, search
from catalens.cli.eval_command import eval_command
from catalens.cli.setup_commands import demo, doctor, models_export, serve

app = typer.Typer(
    name="catalens",
    help="Visual product search: index a product catalog, find the product in a photo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help text is plain prose: markdown mode reads it as such, and `make docs` then writes
    # it as is (rich mode would turn "x>=1" into "x&gt;=1" in docs/cli.md).
    rich_markup_mode="markdown",
)
app.command()(ingest)
app.command()(search)
app.command()(collections)
app.command()(delete)
app.command()(feedback)
app.command("eval")(eval_command)
app.command()(doctor)
app.command()(demo)
app.command()(serve)

models_app = typer.Typer(
    name="models",
    help="ONNX exports of CLIP models for fast CPU inference.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
models_app.command("export")(models_export)
app.add_typer(models_app)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
