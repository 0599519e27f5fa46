"""Ingestion: catalog source -> fetch/decode workers -> batched embedding -> one atomic apply.

The run works in two halves so that a crash never leaves a half-updated collection:

1. Look at every product image. Unchanged local files (same size and mtime) and cached URLs
   are not even decoded; new or changed bytes are decoded and preprocessed in worker threads
   while the main thread embeds full batches. Each embedded batch is saved to the ledger's
   ``vectors`` table at once (keyed by content hash), so a killed run loses at most one batch
   and its re-run embeds only what is still missing.
2. Apply the change set (products added, changed, removed; images added, re-embedded,
   failed) to the ledger in one transaction and then to the vector store, under the
   collection's write lock. Searches see the old state until then.

One bad image is recorded with its reason and skipped; a broken store or model stops the run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.catalog.base import CatalogSource
from catalens.collection.collection import Collection
from catalens.embedders.base import Embedder
from catalens.embedders.preprocess import Preprocessing
from catalens.errors import CatalensError, ModelError, TooManyRemovalsError
from catalens.ingest.decode import ImageLimits, content_hash, decode_image
from catalens.ingest.fetch import ImageFetcher
from catalens.ledger.state import ChangeSet, CollectionState, ImageChange, ImageRow
from catalens.refs import is_url
from catalens.types import Product, ValidationReport

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[str, int, int | None], None]
"""``progress(stage, done, total)``: the CLI draws bars from it; the core never prints."""


def _no_progress(stage: str, done: int, total: int | None) -> None:
    return None


def default_decode_workers() -> int:
    """Load threads for a catalog of local files: half the cores. Decoding and resizing are
    a small share of the work next to the model, which gets all cores for its own threads;
    more decoders would only take turns with it (URLs wait on the network instead and get
    ``Ingestor.workers``)."""
    return max(1, (os.cpu_count() or 2) // 2)


@dataclass(frozen=True)
class IngestFailure:
    """An image this ingest run could not use, and why (the ledger keeps its own record:
    ``ledger.state.FailedImage``)."""

    product_id: str
    ref: str
    reason: str


@dataclass
class IngestReport:
    collection: str
    source: ValidationReport | None = None
    products_seen: int = 0
    products_added: int = 0
    products_updated: int = 0
    products_removed: int = 0
    images_seen: int = 0
    images_embedded: int = 0
    images_reused: int = 0
    """Embedding found in the ledger (unchanged image, duplicate bytes, or a resumed run)."""
    images_unchanged: int = 0
    images_removed: int = 0
    failed: list[IngestFailure] = field(default_factory=list)
    seconds: float = 0.0
    model_runtime: str = ""
    """When this run chose the collection's CLIP runtime (the int8 guard): which and why."""

    @property
    def images_failed(self) -> int:
        return len(self.failed)


@dataclass(frozen=True)
class ImageTask:
    """One (product, image reference) of the source, with what the ledger knew of it."""

    product_id: str
    ref: str
    position: int
    previous: ImageRow | None


@dataclass(frozen=True)
class LoadedImage:
    """What loading one task found: its content hash and file stat, or why it failed."""

    task: ImageTask
    content_hash: str | None = None
    pixels: NDArray[np.float32] | None = None
    """The model input while its vector is still to be computed (in-process engine)."""
    file_size: int | None = None
    file_mtime_ns: int | None = None
    error: str | None = None
    embedded: bool = False
    """Its vector was not in the ledger: this run computes it (else it is reused)."""


class LoadEngine(Protocol):
    """Where a run loads and embeds its images: in this process (``Ingestor``'s threads,
    the default) or on a cluster (``ray_engine.RayEngine``). An engine saves each vector it
    computes to the ledger's vector cache as soon as it has it (so a killed run loses little)
    and yields every task exactly once, in any order."""

    def load_all(
        self, ingestor: Ingestor, tasks: list[ImageTask], report: IngestReport
    ) -> Iterator[LoadedImage]: ...


@dataclass
class Ingestor:
    """Runs one ingest of a source into a collection with an embedder."""

    collection: Collection
    embedder: Embedder
    fetcher: ImageFetcher
    limits: ImageLimits = field(default_factory=ImageLimits)
    batch_size: int = 32
    workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    """Load threads when some images are URLs (fetching waits on the network)."""
    decode_workers: int = field(default_factory=default_decode_workers)
    """Load threads when every image is a local file (CPU-bound decoding)."""
    progress: Progress = _no_progress
    remove_missing: bool = True
    """Products absent from the source are removed (a full sync); off for partial upserts."""
    revalidate_urls: bool = False
    """Ask the server whether each cached image URL changed (a sync: same URL, new bytes)."""
    engine: LoadEngine | None = None
    """Where images are loaded and embedded; ``None``: this process's threads."""
    max_removed_share: float | None = None
    """With ``remove_missing``: refuse (``TooManyRemovalsError``, before anything is fetched or
    changed) a run that would remove more than this share of the known products."""

    def __post_init__(self) -> None:
        # Large JPEGs decode at a reduced scale that still leaves the model full resolution.
        self._draft_size: tuple[int, int] | None
        try:
            preprocessing = Preprocessing.from_card(self.embedder.identity.preprocessing)
            self._draft_size = preprocessing.draft_size()
        except ModelError:
            self._draft_size = None

    def run(self, source: CatalogSource | Iterable[Product]) -> IngestReport:
        started = time.perf_counter()
        self.collection.check_model(self.embedder.identity)
        report = IngestReport(collection=self.collection.name)
        ledger = self.collection.ledger
        previous = ledger.all_images()
        known_products = ledger.product_ids()
        changes = ChangeSet()

        products = list(source)
        report.source = getattr(source, "report", None)
        report.products_seen = len(products)
        self._check_removals(known_products, products)
        tasks: list[ImageTask] = []
        seen_refs: set[tuple[str, str]] = set()
        # A known product counts as updated only for a real change: its title, metadata or
        # image list here, or one of its images' content below.
        updated = _changed_products(ledger, products, known_products, previous)
        for product in products:
            changes.products.append(product)
            if product.id not in known_products:
                report.products_added += 1
            for position, ref in enumerate(dict.fromkeys(product.images)):
                key = (product.id, ref)
                seen_refs.add(key)
                tasks.append(ImageTask(product.id, ref, position, previous.get(key)))
        report.images_seen = len(tasks)

        engine = self.engine
        loading = (
            self._embed_all(tasks, report)
            if engine is None
            else engine.load_all(self, tasks, report)
        )
        for loaded in loading:
            change = self._image_change(loaded, report)
            changes.images.append(change)
            if loaded.task.previous is not None and _image_differs(loaded.task.previous, change):
                updated.add(change.product_id)
        report.products_updated = len(updated & known_products)

        seen_ids = {p.id for p in products}
        for (product_id, ref), row in previous.items():
            if row.origin != "catalog" or (product_id, ref) in seen_refs:
                continue
            if product_id in seen_ids or self.remove_missing:
                changes.removed_images.append((product_id, ref))
                report.images_removed += 1
        if self.remove_missing:
            changes.removed_products = sorted(known_products - seen_ids)
            report.products_removed = len(changes.removed_products)

        self.progress("apply", 0, 1)
        self.collection.apply(changes)
        self.progress("apply", 1, 1)
        report.seconds = time.perf_counter() - started
        return report

    def _check_removals(self, known: AbstractSet[str], products: list[Product]) -> None:
        if not self.remove_missing or self.max_removed_share is None or not known:
            return
        removed = len(known - {p.id for p in products})
        if removed / len(known) > self.max_removed_share:
            raise TooManyRemovalsError(
                f"the source lists {len(products)} products and this run would remove "
                f"{removed} of the collection's {len(known)} (more than max_removed_share "
                f"{self.max_removed_share:.0%}); nothing was changed. Check the source and "
                "its column options; if the catalog really shrank, run again with "
                "--force-removals (library: force_removals=True)",
                removed=removed,
                known=len(known),
            )

    # -- workers -------------------------------------------------------------------------

    def _embed_all(self, tasks: list[ImageTask], report: IngestReport) -> Iterator[LoadedImage]:
        """Load every task in worker threads, embed new pixels in batches, yield in order."""
        known = self.collection.ledger.known_hashes(
            row.content_hash for row in (t.previous for t in tasks) if row and row.content_hash
        )
        known_lock = threading.Lock()
        pending: list[LoadedImage] = []
        done = 0
        self.progress("embed", 0, len(tasks))

        def is_known(digest: str) -> bool:
            with known_lock:
                if digest in known:
                    return True
            # A resumed run finds the vectors its killed predecessor already saved.
            if self.collection.ledger.known_hashes([digest]):
                with known_lock:
                    known.add(digest)
                return True
            return False

        def load(task: ImageTask) -> LoadedImage:
            return self._load(task, is_known)

        all_local = not any(is_url(task.ref) for task in tasks)
        workers = self.decode_workers if all_local else self.workers
        with ThreadPoolExecutor(workers, thread_name_prefix="catalens-load") as pool:
            for loaded in _bounded_map(pool, load, tasks, lookahead=self.batch_size * 3):
                pending.append(loaded)
                if sum(1 for p in pending if p.pixels is not None) >= self.batch_size:
                    yield from self._flush_batch(pending, known, known_lock, report)
                    done += len(pending)
                    pending = []
                    self.progress("embed", done, len(tasks))
            yield from self._flush_batch(pending, known, known_lock, report)
        self.progress("embed", len(tasks), len(tasks))

    def _flush_batch(
        self,
        pending: list[LoadedImage],
        known: set[str],
        known_lock: threading.Lock,
        report: IngestReport,
    ) -> Iterator[LoadedImage]:
        # Several products may share one image: embed each new hash once per batch.
        fresh: dict[str, NDArray[np.float32]] = {}
        for item in pending:
            if item.pixels is not None and item.content_hash and item.content_hash not in known:
                fresh.setdefault(item.content_hash, item.pixels)
        if fresh:
            vectors = self.embedder.embed_pixels(np.stack(list(fresh.values())))
            self.collection.ledger.save_vectors(list(fresh), vectors)
            with known_lock:
                known.update(fresh)
            report.images_embedded += len(fresh)
        # One image per new hash counts as embedded; the others (the same bytes again, or
        # bytes an earlier batch embedded after they were loaded) reuse its vector.
        unclaimed = set(fresh)
        for item in pending:
            if item.embedded and item.content_hash in unclaimed:
                unclaimed.discard(item.content_hash)
            elif item.embedded:
                item = replace(item, pixels=None, embedded=False)
            yield item

    def _load(self, task: ImageTask, is_known: Callable[[str], bool]) -> LoadedImage:
        loaded, data = read_image(task, self.fetcher, revalidate=self.revalidate_urls)
        if data is None or loaded.content_hash is None or is_known(loaded.content_hash):
            return loaded
        try:
            pixels = image_pixels(
                data,
                task.ref,
                self.embedder.preprocess,
                limits=self.limits,
                draft_size=self._draft_size,
            )
        except CatalensError as exc:
            return LoadedImage(task, error=str(exc))
        return replace(loaded, pixels=pixels, embedded=True)

    def _image_change(self, loaded: LoadedImage, report: IngestReport) -> ImageChange:
        task, previous = loaded.task, loaded.task.previous
        if loaded.error is not None:
            report.failed.append(IngestFailure(task.product_id, task.ref, loaded.error))
            if previous is not None and previous.status == "ok":
                # A transient failure must not drop a product that was searchable:
                # keep its last good vector and note the error.
                return ImageChange(
                    task.product_id,
                    task.ref,
                    task.position,
                    previous.content_hash,
                    "ok",
                    loaded.error,
                    previous.file_size,
                    previous.file_mtime_ns,
                )
            return ImageChange(
                task.product_id, task.ref, task.position, None, "failed", loaded.error
            )
        unchanged = (
            previous is not None
            and previous.status == "ok"
            and previous.content_hash == loaded.content_hash
        )
        if unchanged:
            report.images_unchanged += 1
        elif not loaded.embedded:
            report.images_reused += 1
        return ImageChange(
            task.product_id,
            task.ref,
            task.position,
            loaded.content_hash,
            "ok",
            None,
            loaded.file_size,
            loaded.file_mtime_ns,
        )


def read_image(
    task: ImageTask, fetcher: ImageFetcher, *, revalidate: bool = False
) -> tuple[LoadedImage, bytes | None]:
    """Identify one task's image: its content hash (or why it cannot be read), and its bytes
    when they are not what the ledger already holds for this (product, ref); ``None`` when
    unchanged or failed. An unchanged local file (same size and mtime) is not even read;
    ``revalidate`` asks the server whether a cached URL changed."""
    previous = task.previous
    try:
        # The fetcher decides first: a path it refuses (an untrusted source's file outside
        # its directories) is not looked at, so the error does not tell whether it exists.
        fetcher.check_ref(task.ref)
        local = fetcher.local_path(task.ref)
    except CatalensError as exc:
        return LoadedImage(task, error=str(exc)), None
    stat = None
    if local is not None:
        try:
            stat = local.stat()
        except OSError as exc:
            return LoadedImage(task, error=f"cannot read file: {exc.strerror or exc}"), None
        if (
            previous is not None
            and previous.status == "ok"
            and previous.content_hash
            and previous.file_size == stat.st_size
            and previous.file_mtime_ns == stat.st_mtime_ns
        ):
            return LoadedImage(
                task, previous.content_hash, None, stat.st_size, stat.st_mtime_ns
            ), None
    try:
        fetched = fetcher.fetch(task.ref, revalidate=revalidate and local is None)
    except CatalensError as exc:
        return LoadedImage(task, error=str(exc)), None
    digest = fetched.content_hash or content_hash(fetched.data)
    size = stat.st_size if stat else None
    mtime = stat.st_mtime_ns if stat else None
    loaded = LoadedImage(task, digest, None, size, mtime)
    if previous is not None and previous.content_hash == digest:
        return loaded, None
    return loaded, fetched.data


def image_pixels(
    data: bytes,
    ref: str,
    preprocess: Callable[[Image.Image], NDArray[np.float32]],
    *,
    limits: ImageLimits,
    draft_size: tuple[int, int] | None,
) -> NDArray[np.float32]:
    """Decode image bytes safely (``limits``; a large JPEG at ``draft_size``) and turn them
    into the model's input; raises ``CatalensError`` for bytes that are not a usable image."""
    return preprocess(decode_image(data, source=ref, limits=limits, draft_size=draft_size))


def _changed_products(
    ledger: CollectionState,
    products: list[Product],
    known: set[str],
    previous: dict[tuple[str, str], ImageRow],
) -> set[str]:
    """Known products whose title, metadata or list of catalog images differs from the
    ledger's (compared as the ledger stores them: metadata through JSON)."""
    stored = ledger.get_products(p.id for p in products if p.id in known)
    stored_refs: dict[str, list[tuple[int, str]]] = {}
    for (product_id, ref), row in previous.items():
        if row.origin == "catalog":
            stored_refs.setdefault(product_id, []).append((row.position, ref))
    changed: set[str] = set()
    for product in products:
        if product.id not in stored:
            continue
        title, metadata = stored[product.id]
        refs = tuple(ref for _, ref in sorted(stored_refs.get(product.id, [])))
        as_stored = json.loads(json.dumps(dict(product.metadata), default=str))
        if (title, metadata, refs) != (
            product.title,
            as_stored,
            tuple(dict.fromkeys(product.images)),
        ):
            changed.add(product.id)
    return changed


def _image_differs(previous: ImageRow, change: ImageChange) -> bool:
    """Whether an image the ledger knew changed in what a search sees: its bytes, or whether
    it is usable and why not."""
    return (previous.content_hash, previous.status, previous.error) != (
        change.content_hash,
        change.status,
        change.error,
    )


def _bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], *, lookahead: int
) -> Iterator[R]:
    """``pool.map`` that keeps at most ``lookahead`` items in flight (bounded memory)."""
    queue: deque[Future[R]] = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) >= lookahead:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()
