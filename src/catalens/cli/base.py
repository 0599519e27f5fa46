"""What every command uses: the two consoles, the service it runs on, progress bars, and
``print_error``, which prints a message literally (Rich would read ``[serve]`` as markup)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from catalens.errors import CatalensError
from catalens.refs import is_url
from catalens.service.query_image import QueryImage, RemoteURL
from catalens.service.service import CatalensService, build_service
from catalens.service.trusted import TrustedPath
from catalens.settings import Settings

out = Console()
err = Console(stderr=True)

CollectionOpt = Annotated[
    str, typer.Option("--collection", "-c", metavar="NAME", help="Collection name.")
]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print JSON.")]
"""``--json``; a flag takes no value, so it shows none (``metavar=""``) in ``--help``."""


# Choices as Enums so that ``--help`` lists them and a typo is refused by name. Their values
# are the settings' own words (``settings.IndexType``, ``settings.Metric``, ``eval``'s order).
class IndexChoice(StrEnum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


class MetricChoice(StrEnum):
    cosine = "cosine"
    l2 = "l2"


class OrderChoice(StrEnum):
    shuffled = "shuffled"
    file = "file"


def stdin_is_terminal() -> bool:
    """Whether someone can answer a question: a script or a pipe cannot."""
    return sys.stdin is not None and sys.stdin.isatty()


def print_error(message: object) -> None:
    """One red line on stderr; the message is escaped, so ``catalens[serve]`` prints as is."""
    err.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)


def query_image(ref: str | Path) -> QueryImage:
    """An image named on the command line: an http(s) URL is fetched behind the address guard;
    anything else is a file of the operator who typed it."""
    if isinstance(ref, str) and is_url(ref):
        return RemoteURL(ref)
    return TrustedPath(ref)


def settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@contextmanager
def open_service(**overrides: Any) -> Iterator[CatalensService]:
    """The service built from settings; a library error becomes one line and exit status 1."""
    service = build_service(settings(**overrides))
    try:
        yield service
    except CatalensError as exc:
        print_error(exc)
        raise typer.Exit(1) from None
    finally:
        service.close()


def parse_pairs(pairs: list[str] | None, what: str) -> dict[str, str] | None:
    if not pairs:
        return None
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} must look like KEY=VALUE, got {pair!r}")
        parsed[key] = value
    return parsed


class Bars:
    """Turns the core's ``progress(stage, done, total)`` callbacks into Rich bars with ETA."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def progress_bars(console: Console = err) -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
