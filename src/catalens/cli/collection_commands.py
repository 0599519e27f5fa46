"""The commands on a collection's contents: ``ingest``, ``search``, ``collections``,
``delete`` and ``feedback``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from catalens.cli.base import (
    Bars,
    CollectionOpt,
    IndexChoice,
    JsonOpt,
    MetricChoice,
    open_service,
    out,
    parse_pairs,
    print_error,
    progress_bars,
    query_image,
    stdin_is_terminal,
)
from catalens.collection.config import SourceConfig
from catalens.errors import CollectionNotFoundError
from catalens.ingest.pipeline import IngestReport
from catalens.service.service import ALL

T = TypeVar("T")


class EngineChoice(StrEnum):
    """Where ``ingest`` loads and embeds images (``CatalensService.ingest``'s ``engine``)."""

    local = "local"
    ray = "ray"


def ingest(
    collection: CollectionOpt,
    source: Annotated[
        str, typer.Option(metavar="PATH|URL", help="CSV/JSONL file, folder, or http(s) URL.")
    ],
    format: Annotated[
        str | None,
        typer.Option("--format", metavar="FORMAT", help="csv, folder or jsonl (default: detect)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(metavar="MODEL", help="Model for a new collection.")
    ] = None,
    index: Annotated[
        IndexChoice | None,
        typer.Option(help="Index of a new collection: exact (flat) or approximate."),
    ] = None,
    metric: Annotated[
        MetricChoice | None, typer.Option(help="Similarity of a new collection.")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option(
            metavar="STORE", help="faiss (default), a postgresql:// DSN, or postgres-local."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(metavar="", help="Rebuild the collection from scratch.")
    ] = False,
    force_removals: Annotated[
        bool,
        typer.Option(
            "--force-removals",
            metavar="",
            help="Allow removing more than max_removed_share (default half) of the products.",
        ),
    ] = False,
    id_column: Annotated[
        str | None, typer.Option(metavar="COLUMN", help="CSV/JSONL column with the id.")
    ] = None,
    title_column: Annotated[
        str | None, typer.Option(metavar="COLUMN", help="Column with the title.")
    ] = None,
    image_column: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN", help="Column(s) with image paths/URLs (repeatable)."),
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(metavar="COLUMN=VALUE", help="Only rows with COLUMN=VALUE (repeatable)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the report as JSON.")
    ] = False,
    engine: Annotated[
        EngineChoice,
        typer.Option(help="Load and embed in this process, or on a Ray cluster (ray extra)."),
    ] = EngineChoice.local,
    ray_address: Annotated[
        str | None,
        typer.Option(metavar="ADDR", help="Ray cluster to join (default: start a local one)."),
    ] = None,
) -> None:
    """Index a catalog into a collection (incremental: only new or changed images are embedded).

    Re-running it for a collection reuses the column options it was created with unless
    new ones are given, and stops before removing most of the catalog (--force-removals).
    """
    mapping = None
    if id_column:
        mapping = {"id": id_column, "title": title_column, "images": tuple(image_column or ())}
    config = SourceConfig(
        location=source,
        format=format,
        mapping=mapping,
        where=parse_pairs(where, "--where"),
    )
    with open_service() as service, progress_bars() as progress:
        report = service.ingest(
            collection,
            config,
            model=model,
            index=index.value if index else None,
            metric=metric.value if metric else None,
            store=store,
            force=force,
            progress=Bars(progress),
            force_removals=force_removals,
            engine=engine.value,
            ray_address=ray_address,
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
            lambda row: f"  [yellow]rejected[/yellow] line {row.line}: {escape(row.reason)}",
            "rejected rows",
        )
    out.print(
        f"ingest  {report.collection}: {report.products_seen} products "
        f"(+{report.products_added} new, -{report.products_removed} removed); images: "
        f"{report.images_embedded} embedded, {report.images_unchanged} unchanged, "
        f"{report.images_reused} reused, {report.images_removed} removed, "
        f"{report.images_failed} failed in {report.seconds:.1f}s"
    )
    if report.model_runtime:
        out.print(f"model   runs on {report.model_runtime}", highlight=False)
    _print_first(
        report.failed,
        lambda failure: (
            f"  [red]failed[/red] {escape(failure.product_id)}: {escape(failure.reason)}"
        ),
        "failed images",
    )


def _print_first(items: Sequence[T], line: Callable[[T], str], rest: str, shown: int = 20) -> None:
    """One line each for the first ``shown`` items, then how many ``rest`` were left out."""
    for item in items[:shown]:
        out.print(line(item), highlight=False)
    if len(items) > shown:
        out.print(f"  ... and {len(items) - shown} more {rest}")


def search(
    collection: CollectionOpt,
    image: Annotated[
        str | None, typer.Argument(metavar="IMAGE", help="Image path or http(s) URL.")
    ] = None,
    text: Annotated[
        str | None, typer.Option(metavar="WORDS", help="Search by words (CLIP models).")
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", min=1, metavar="N", help="How many products.")
    ] = 5,
    threshold: Annotated[
        float | None,
        typer.Option(
            metavar="SCORE",
            help="Minimum calibrated probability (a calibrated collection, photo search), "
            "else minimum uncentred cosine; neither drifts as queries arrive.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the products that match a photo (or words). Use --collection all for every one."""
    if (image is None) == (text is None):
        raise typer.BadParameter("give an IMAGE or --text, not both")
    with open_service() as service:
        query = None if image is None else query_image(image)
        hits = service.search(collection, image=query, text=text, top_k=top_k, threshold=threshold)
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in hits], default=str))
        return
    table = Table("rank", "product", "title", "score", "verdict", "matched image", "metadata")
    if collection == ALL:
        table.add_column("collection")
    for hit in hits:
        meta = ", ".join(f"{k}={v}" for k, v in list(hit.metadata.items())[:4])
        verdict = f"{hit.verdict} {hit.probability:.2f}" if hit.probability is not None else "-"
        row = [str(hit.rank), hit.product_id, hit.title, f"{hit.score:.4f}", verdict, hit.image]
        row.append(meta)
        if collection == ALL:
            row.append(hit.collection)
        table.add_row(*row)
    out.print(table if hits else "no match")


def collections(as_json: JsonOpt = False) -> None:
    """List collections with their model and counts."""
    with open_service() as service:
        summaries = service.summaries()
    if as_json:
        out.print_json(json.dumps([vars(s) for s in summaries], default=str))
        return
    table = Table(
        "name", "model", "dim", "index", "store", "products", "images", "failed", "calibration"
    )
    for s in summaries:
        fit = s.calibration
        table.add_row(
            s.name,
            s.model,
            str(s.dim),
            s.index,
            s.store,
            str(s.products),
            str(s.images),
            str(s.failed_images),
            f"{fit['source']} ({fit['samples']} samples)" if fit else "none",
        )
    out.print(table if summaries else "no collections yet: catalens ingest --collection NAME ...")


def delete(
    collection: CollectionOpt,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", metavar="", help="Do not ask (needed when stdin is not a terminal)."
        ),
    ] = False,
) -> None:
    """Delete a collection: its index, catalog state, confirmed photos and feedback. Asks
    first unless --yes."""
    with open_service() as service:
        if collection not in service.collection_names():
            raise CollectionNotFoundError(f"no collection {collection!r}")
        if not yes:
            if not stdin_is_terminal():
                # A script must say so: a prompt it cannot answer would hang or read garbage.
                print_error(
                    f"not deleting {collection!r}: stdin is not a terminal, so nobody can "
                    "confirm; pass --yes to delete it"
                )
                raise typer.Exit(1)
            question = (
                f"Delete collection {collection!r} with its index, confirmed photos and "
                "feedback? This cannot be undone."
            )
            if not typer.confirm(question, default=False):
                print_error(f"not deleted: {collection}")
                raise typer.Exit(1)
        service.delete_collection(collection)
    out.print(f"deleted {collection}")


def feedback(
    collection: CollectionOpt,
    image: Annotated[Path, typer.Option(metavar="PATH", help="The photo the verdict is about.")],
    verdict: Annotated[
        str,
        typer.Option(
            metavar="VERDICT",
            help="correct (it is PRODUCT), actually (same), wrong (it is not).",
        ),
    ],
    product: Annotated[str, typer.Option(metavar="ID", help="The product id the verdict names.")],
    user: Annotated[
        str | None, typer.Option(metavar="NAME", help="Who gives it (kept as provenance).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tell the collection whether a photo shows a product: a confirmed photo becomes an extra
    view of it, a wrong one a hard negative."""
    if verdict not in ("correct", "wrong", "actually"):
        raise typer.BadParameter("--verdict must be correct, wrong or actually")
    with open_service() as service:
        result = service.feedback(
            collection,
            image=query_image(image),
            verdict=verdict,  # type: ignore[arg-type]
            product_id=product,
            user=user,
        )
    if as_json:
        out.print_json(json.dumps(asdict(result), default=str))
    elif result.view is not None:
        state = "now a confirmed view" if result.added else "already a confirmed view"
        out.print(f"{image.name}: {state} of {product} (view {result.view.view_id})")
    elif result.negative_id is not None:
        out.print(f"{image.name}: recorded as not {product} (hard negative {result.negative_id})")
    else:
        out.print(f"{image.name}: not kept (the per-product cap dropped it as redundant)")
