"""The ``catalens`` command line: a thin Typer layer over ``CatalensService``.

Every command builds the service from settings, calls it, and prints. Library errors become
one red line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from catalens.collection import SourceConfig
from catalens.errors import CatalensError
from catalens.ingest import IngestReport
from catalens.service import ALL, CatalensService, build_service
from catalens.settings import Settings

app = typer.Typer(
    name="catalens",
    help="Visual product search: index a product catalog, find the product in a photo.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

CollectionOpt = Annotated[str, typer.Option("--collection", "-c", help="Collection name.")]


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@contextmanager
def _service(**overrides: Any) -> Iterator[CatalensService]:
    service = build_service(_settings(**overrides))
    try:
        yield service
    except CatalensError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        service.close()


def _parse_pairs(pairs: list[str] | None, what: str) -> dict[str, str] | None:
    if not pairs:
        return None
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{what} must look like KEY=VALUE, got {pair!r}")
        parsed[key] = value
    return parsed


class _Bars:
    """Turns the core's ``progress(stage, done, total)`` callbacks into Rich bars with ETA."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


@app.command()
def ingest(
    collection: CollectionOpt,
    source: Annotated[str, typer.Option(help="CSV/JSONL file, folder, or http(s) URL.")],
    format: Annotated[
        str | None, typer.Option("--format", help="csv, folder or jsonl (default: detect).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model for a new collection.")] = None,
    index: Annotated[str | None, typer.Option(help="flat, hnsw or ivf.")] = None,
    metric: Annotated[str | None, typer.Option(help="cosine or l2.")] = None,
    store: Annotated[
        str | None,
        typer.Option(help="faiss (default), a postgresql:// DSN, or postgres-local."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild the collection from scratch.")] = False,
    id_column: Annotated[str | None, typer.Option(help="CSV/JSONL column with the id.")] = None,
    title_column: Annotated[str | None, typer.Option(help="Column with the title.")] = None,
    image_column: Annotated[
        list[str] | None, typer.Option(help="Column(s) with image paths/URLs (repeatable).")
    ] = None,
    where: Annotated[
        list[str] | None, typer.Option(help="Only rows with COLUMN=VALUE (repeatable).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Index a catalog into a collection (incremental: only new or changed images are embedded)."""
    mapping = None
    if id_column:
        mapping = {"id": id_column, "title": title_column, "images": tuple(image_column or ())}
    config = SourceConfig(
        location=source,
        format=format,
        mapping=mapping,
        where=_parse_pairs(where, "--where"),
    )
    with _service() as service, _progress() as progress:
        report = service.ingest(
            collection,
            config,
            model=model,
            index=index,
            metric=metric,
            store=store,
            force=force,
            progress=_Bars(progress),
        )
    _print_ingest(report, as_json)


def _print_ingest(report: IngestReport, as_json: bool) -> None:
    source = report.source
    if as_json:
        data = {k: v for k, v in vars(report).items() if k not in {"source", "failed"}} | {
            "images_failed": report.images_failed,
            "failed": [vars(f) for f in report.failed],
            "source": source.to_dict() if source else None,
        }
        out.print_json(json.dumps(data, default=str))
        return
    if source is not None:
        out.print(
            f"source  {source.source}: {source.rows} rows, {source.products} products, "
            f"{source.images} images, {len(source.rejected)} rejected, "
            f"{len(source.repaired)} repaired"
        )
        _print_first(
            source.rejected,
            lambda row: f"  [yellow]rejected[/yellow] line {row.line}: {row.reason}",
            "rejected rows",
        )
    out.print(
        f"ingest  {report.collection}: {report.products_seen} products "
        f"(+{report.products_added} new, -{report.products_removed} removed); images: "
        f"{report.images_embedded} embedded, {report.images_unchanged} unchanged, "
        f"{report.images_reused} reused, {report.images_removed} removed, "
        f"{report.images_failed} failed in {report.seconds:.1f}s"
    )
    _print_first(
        report.failed,
        lambda failure: f"  [red]failed[/red] {failure.product_id}: {failure.reason}",
        "failed images",
    )


def _print_first(items: Sequence[T], line: Callable[[T], str], rest: str, shown: int = 20) -> None:
    """One line each for the first ``shown`` items, then how many ``rest`` were left out."""
    for item in items[:shown]:
        out.print(line(item), highlight=False)
    if len(items) > shown:
        out.print(f"  ... and {len(items) - shown} more {rest}")


@app.command()
def search(
    collection: CollectionOpt,
    image: Annotated[str | None, typer.Argument(help="Image path or http(s) URL.")] = None,
    text: Annotated[str | None, typer.Option(help="Search by words (CLIP models).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1)] = 5,
    threshold: Annotated[float | None, typer.Option(help="Minimum cosine score.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Find the products that match a photo (or words). Use --collection all for every one."""
    if (image is None) == (text is None):
        raise typer.BadParameter("give an IMAGE or --text, not both")
    with _service() as service:
        hits = service.search(collection, image=image, text=text, top_k=top_k, threshold=threshold)
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in hits], default=str))
        return
    table = Table("rank", "product", "title", "score", "matched image", "metadata")
    if collection == ALL:
        table.add_column("collection")
    for hit in hits:
        meta = ", ".join(f"{k}={v}" for k, v in list(hit.metadata.items())[:4])
        row = [str(hit.rank), hit.product_id, hit.title, f"{hit.score:.4f}", hit.image, meta]
        if collection == ALL:
            row.append(hit.collection)
        table.add_row(*row)
    out.print(table if hits else "no match")


@app.command()
def collections(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List collections with their model and counts."""
    with _service() as service:
        summaries = service.summaries()
    if as_json:
        out.print_json(json.dumps([vars(s) for s in summaries], default=str))
        return
    table = Table("name", "model", "dim", "index", "store", "products", "images", "failed")
    for s in summaries:
        table.add_row(
            s.name,
            s.model,
            str(s.dim),
            s.index,
            s.store,
            str(s.products),
            str(s.images),
            str(s.failed_images),
        )
    out.print(table if summaries else "no collections yet: catalens ingest --collection NAME ...")


@app.command()
def delete(collection: CollectionOpt) -> None:
    """Delete a collection and its index."""
    with _service() as service:
        service.delete_collection(collection)
    out.print(f"deleted {collection}")


@app.command("eval")
def eval_command(
    collection: CollectionOpt,
    queries: Annotated[Path, typer.Option(help="CSV with image_path,item_id columns.")],
    where: Annotated[list[str] | None, typer.Option(help="Only rows with COLUMN=VALUE.")] = None,
    group_by: Annotated[
        str | None, typer.Option(help="Per-group breakdown: a queries column or metadata key.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Measure retrieval quality: recall@1/5/10, precision@k, MRR, mAP, latency."""
    from catalens.evaluate import evaluate, read_queries

    with _service() as service:
        loaded = read_queries(queries, where=_parse_pairs(where, "--where"))
        report = evaluate(service, collection, loaded, group_by=group_by)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return
    metrics = report.metrics
    table = Table("metric", "value")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in report.latency_ms.items():
        table.add_row(f"latency {key} (ms)", f"{value:.1f}")
    out.print(table)
    if report.groups:
        groups = Table(report.group_by or "group", "queries", "recall@1", "recall@5", "mrr")
        for name, m in report.groups.items():
            groups.add_row(
                name,
                str(int(m["queries"])),
                f"{m['recall@1']:.3f}",
                f"{m['recall@5']:.3f}",
                f"{m['mrr']:.3f}",
            )
        out.print(groups)
    if report.skipped:
        out.print(f"{len(report.skipped)} queries skipped, e.g. {report.skipped[0]}")


@app.command()
def doctor(model: Annotated[str | None, typer.Option(help="Model to try loading.")] = None) -> None:
    """Check the installation: versions, model loadable, store writable. One line each."""
    from catalens.doctor import run_checks

    failed = False
    for check in run_checks(_settings(), model=model):
        mark = "[green]ok[/green]  " if check.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {check.name}: {check.detail}", highlight=False)
        failed = failed or not check.ok
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option(help="Where to write the sample catalog.")] = Path(
        "demo-data"
    ),
    collection: Annotated[str, typer.Option("--collection", "-c")] = "demo",
    model: Annotated[str | None, typer.Option(help="Model (default: CLIP, else built-in).")] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve", help="Then serve the API and web UI.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for --serve.")] = 8000,
) -> None:
    """Generate a sample catalog, ingest it, and search its shopper photos."""
    from catalens.demo import run_demo

    with _service() as service:
        ok = run_demo(service, directory, collection=collection, model=model, console=out)
    if not ok:
        raise typer.Exit(1)
    if serve_after:
        import os

        os.environ.setdefault("CATALENS_DEFAULT_COLLECTION", collection)
        out.print(f"web UI: http://127.0.0.1:{port}/  (API docs at /docs; Ctrl-C stops)")
        serve(host="127.0.0.1", port=port, workers=1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (CATALENS_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (CATALENS_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (CATALENS_WORKERS).")
    ] = None,
) -> None:
    """Serve the HTTP API and web UI with uvicorn (API docs at /docs)."""
    try:
        import uvicorn

        from catalens.api.app import create_app
        from catalens.api.legacy_env import settings_from_env
    except ImportError as exc:
        err.print(
            f"[red]error:[/red] serving needs the serve extra ({exc.name} is missing): "
            "pip install 'catalens[serve]'",
            highlight=False,
        )
        raise typer.Exit(1) from None
    settings = settings_from_env(host=host, port=port, workers=workers)
    if settings.workers > 1:
        # Each worker process builds its own app (and service) from the environment.
        uvicorn.run(
            "catalens.api.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
        )
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
