"""``catalens demo``: a self-made sample catalog, ingested and searched end to end."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console
from rich.table import Table

from catalens.collection.config import SourceConfig
from catalens.errors import CatalensError, ModelError
from catalens.sample.catalog import generate_sample_catalog
from catalens.service.service import CatalensService
from catalens.service.trusted import TrustedPath
from catalens.settings import DEFAULT_MODEL, FALLBACK_MODEL


def choose_model(service: CatalensService, requested: str | None, console: Console) -> str:
    """The requested model, else CLIP when it can be loaded, else the offline built-in."""
    if requested:
        service.embedder(requested)
        return requested
    try:
        if not _hub_reachable() and not _in_local_cache(DEFAULT_MODEL):
            raise ModelError("the Hugging Face hub is unreachable and the model is not cached")
        service.embedder(DEFAULT_MODEL)
        return DEFAULT_MODEL
    except CatalensError as exc:
        reason = str(exc).splitlines()[0][:160]
        console.print(
            f"CLIP ({DEFAULT_MODEL}) is not available here ({reason}); "
            f"using the offline built-in {FALLBACK_MODEL} instead.",
            highlight=False,
            soft_wrap=True,
        )
        service.embedder(FALLBACK_MODEL)
        return FALLBACK_MODEL


def _hub_reachable(timeout: float = 2.0) -> bool:
    """A quick look before a model download whose own retries take half a minute offline."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_local_cache(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def run_demo(
    service: CatalensService,
    directory: Path,
    *,
    collection: str = "demo",
    model: str | None = None,
    console: Console,
) -> bool:
    """Generate, ingest, search. True when most shopper photos found their product first."""
    sample = generate_sample_catalog(directory)
    console.print(f"sample catalog: {len(sample.products)} products in {sample.root}")
    spec = choose_model(service, model, console)
    force = False
    if collection in service.collection_names():
        force = service.collection(collection).config.model_spec != spec
    report = service.ingest(
        collection,
        SourceConfig(location=str(sample.catalog_csv), format="csv"),
        model=spec,
        force=force,
    )
    console.print(
        f"ingested {report.products_seen} products with {spec}: "
        f"{report.images_embedded} images embedded, {report.images_unchanged} unchanged"
    )
    titles = {p.id: p.title for p in sample.products}
    table = Table("shopper photo", "expected", "found first", "score", "")
    right = 0
    with sample.queries_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        photo = sample.queries_csv.parent / row["image_path"]
        hits = service.search(collection, image=TrustedPath(photo), top_k=3)
        first = hits[0] if hits else None
        correct = first is not None and first.product_id == row["item_id"]
        right += correct
        table.add_row(
            photo.name,
            titles.get(row["item_id"], row["item_id"]),
            first.title if first else "-",
            f"{first.score:.3f}" if first else "-",
            "[green]right[/green]" if correct else "[red]wrong[/red]",
        )
    console.print(table)
    console.print(f"{right}/{len(rows)} shopper photos found their product first")
    # The offline fallback model is weaker than CLIP on these deliberately hard photos;
    # the demo fails only when search is clearly broken.
    return right * 2 > len(rows)
