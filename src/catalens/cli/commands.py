"""The ``catalens`` command line: a thin Typer layer over ``CatalensService``.

Every command builds the service from settings, calls it, and prints. Library errors become
one red line on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
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

from catalens.collection.collection import SourceConfig
from catalens.errors import CatalensError
from catalens.ingest.pipeline import IngestReport
from catalens.service.service import ALL, CatalensService, build_service
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


@app.command()
def feedback(
    collection: CollectionOpt,
    image: Annotated[Path, typer.Option(help="The photo the verdict is about.")],
    verdict: Annotated[
        str, typer.Option(help="correct (it is PRODUCT), actually (same), wrong (it is not).")
    ],
    product: Annotated[str, typer.Option(help="The product id the verdict names.")],
    user: Annotated[str | None, typer.Option(help="Who gives it (kept as provenance).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Tell the collection whether a photo shows a product: a confirmed photo becomes an extra
    view of it, a wrong one a hard negative."""
    if verdict not in ("correct", "wrong", "actually"):
        raise typer.BadParameter("--verdict must be correct, wrong or actually")
    with _service() as service:
        result = service.feedback(
            collection,
            image=image,
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


@app.command("eval")
def eval_command(
    collection: CollectionOpt,
    queries: Annotated[Path, typer.Option(help="CSV with image_path,item_id columns.")],
    where: Annotated[list[str] | None, typer.Option(help="Only rows with COLUMN=VALUE.")] = None,
    group_by: Annotated[
        str | None, typer.Option(help="Per-group breakdown: a queries column or metadata key.")
    ] = None,
    out_of_catalog: Annotated[
        str,
        typer.Option(
            help="Score false matches: leave this share of products out (seeded), or each: "
            "every query again without its own product."
        ),
    ] = "0",
    simulate_feedback: Annotated[
        int | None,
        typer.Option(min=0, help="First confirm K pool photos per product (on a copy)."),
    ] = None,
    feedback_pool: Annotated[
        Path | None, typer.Option(help="CSV (image_path,item_id) of photos to confirm.")
    ] = None,
    pool_where: Annotated[
        list[str] | None, typer.Option(help="Only pool rows with COLUMN=VALUE.")
    ] = None,
    curve: Annotated[
        str | None, typer.Option(help="Several K, e.g. 0,1,3,10: one row each.")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed for the query order, photos picked and products left out.")
    ] = 0,
    order: Annotated[
        str,
        typer.Option(
            help="Query order: shuffled (seeded; a shop's real stream mixes its products, "
            "which domain centering learns from) or file."
        ),
    ] = "shuffled",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Measure retrieval quality: recall@1/5/10, precision@k, MRR, mAP, latency, and how
    well the calibrated verdicts separate matches from products not in the catalog."""
    from catalens.cli.report import print_curve, print_eval
    from catalens.eval.evaluate import evaluate, parse_out_of_catalog, read_queries
    from catalens.eval.feedback_curve import feedback_curve, parse_curve

    looping = simulate_feedback is not None or curve is not None
    if looping and feedback_pool is None:
        raise typer.BadParameter("--simulate-feedback and --curve need a --feedback-pool")
    with _service() as service:
        leave_out = parse_out_of_catalog(out_of_catalog)
        loaded = read_queries(queries, where=_parse_pairs(where, "--where"))
        if not looping:
            report = evaluate(
                service,
                collection,
                loaded,
                group_by=group_by,
                out_of_catalog=leave_out,
                seed=seed,
                order=order,
            )
        else:
            assert feedback_pool is not None
            pool = read_queries(feedback_pool, where=_parse_pairs(pool_where, "--pool-where"))
            ks = parse_curve(curve) if curve else [simulate_feedback or 0]
            with _progress() as bars:
                points = feedback_curve(
                    service,
                    collection,
                    loaded,
                    pool,
                    ks,
                    seed=seed,
                    out_of_catalog=leave_out,
                    group_by=group_by,
                    order=order,
                    progress=_Bars(bars),
                )
    if not looping:
        if as_json:
            out.print_json(json.dumps(report.to_dict()))
        else:
            print_eval(out, report)
    elif as_json:
        data: Any = [p.to_dict() for p in points] if curve else points[0].to_dict()
        out.print_json(json.dumps(data))
    elif curve:
        print_curve(out, points)
    else:
        print_eval(out, points[0].report)


@app.command()
def doctor(model: Annotated[str | None, typer.Option(help="Model to try loading.")] = None) -> None:
    """Check the installation: versions, model loadable, store writable. One line each."""
    from catalens.cli.doctor import run_checks

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
    from catalens.cli.demo import run_demo

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


models_app = typer.Typer(
    name="models",
    help="ONNX exports of CLIP models for fast CPU inference.",
    no_args_is_help=True,
)
app.add_typer(models_app)


@models_app.command("export")
def models_export(
    model: Annotated[
        str | None, typer.Argument(help="Hub id or CLIP directory (default: CATALENS_MODEL).")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(help="int8: also write a dynamic int8 variant (use it as MODEL:int8)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Export again even if it exists.")] = False,
) -> None:
    """Export a CLIP model's image and text towers to ONNX under CATALENS_HOME/models.

    Collections use the export on CPU automatically (CATALENS_CLIP_RUNTIME=auto). The fp32
    export gives the same vectors as torch; int8 is faster and differs slightly, so it is a
    model of its own (its agreement with fp32 is printed here).
    """
    with _service() as service:
        result = service.export_model(model, quantize=quantize, force=force)
    identity = result.identity
    done = ", ".join(result.created) if result.created else "nothing new (already exported)"
    out.print(f"{identity.name} @ {identity.revision}: {done} in {result.seconds:.1f}s")
    out.print(f"folder: {result.directory}", highlight=False, soft_wrap=True)
    table = Table("variant", "check", "image mean", "image min", "text mean", "text min")
    labels = {"fp32_vs_torch": ("fp32", "vs torch"), "int8_vs_fp32": ("int8", "vs fp32")}
    for key, values in result.agreement.items():
        variant, check = labels.get(key, (key, ""))
        table.add_row(
            variant,
            check,
            *(
                f"{values.get(f'{tower}_{stat}_cosine', float('nan')):.6f}"
                for tower in ("image", "text")
                for stat in ("mean", "min")
            ),
        )
    out.print(table)
    if "int8_vs_fp32" in result.agreement:
        spec = (model or service.settings.model).removesuffix(":int8")
        out.print(f"int8: use it as --model {spec}:int8", highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
