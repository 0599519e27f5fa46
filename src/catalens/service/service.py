"""The service object every layer (CLI, HTTP API, web UI) talks to.

``build_service(settings)`` composes the object graph once: embedders are loaded lazily and
shared per model, collections are opened once and cached, one fetcher (with its download
cache) serves every catalog the operator names, one guarded fetcher every ``RemoteURL``
query, and ``UntrustedReads`` what the HTTP API names (upserted images, sources, and the
images those sources name).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.catalog.base import CatalogSource
from catalens.collection.collection import Collection
from catalens.collection.config import CollectionConfig, SourceConfig
from catalens.collection.refit import recalibrate, refit_if_due
from catalens.embedders.base import Embedder, embed_images
from catalens.embedders.onnx_export import ExportResult
from catalens.errors import ConfigError, NoSourceError
from catalens.feedback import confirmed_photos as photos
from catalens.feedback.confirmed_photos import ConfirmedPhoto
from catalens.feedback.verdicts import FeedbackParts, FeedbackResult, Verdict, give_feedback
from catalens.ingest.decode import ImageLimits
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.pipeline import Ingestor, IngestReport, LoadEngine, Progress
from catalens.ledger.state import ChangeSet
from catalens.search.calibration import Calibration
from catalens.service import models, query_image, sources
from catalens.service.collections import CollectionRegistry, CollectionSummary, new_config
from catalens.service.query_image import QueryFetcher, QueryImage, check_query_image, draft_size
from catalens.service.search import embed_text, search_collections
from catalens.service.sources import check_source, is_rest, open_source, sync_summary
from catalens.service.stores import query_log, state_database, store_factory
from catalens.service.trusted import TRUSTED_REFS, TrustedRefs
from catalens.service.untrusted import UntrustedReads
from catalens.service.upsert_refs import check_upsert_refs, guarded_fetcher
from catalens.settings import Settings
from catalens.types import Hit, Product, SearchResult

EmbedderLoader = Callable[[str], Embedder]
ALL = "all"


class CatalensService:
    """Collections, models and ingestion behind one object. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder_loader: EmbedderLoader | None = None,
        fetcher: ImageFetcher | None = None,
        query_fetcher: QueryFetcher | None = None,
    ) -> None:
        self.settings = settings
        self._load_embedder = embedder_loader or partial(models.load_model, settings)
        self._embedders: dict[str, Embedder] = {}
        self._lock = threading.RLock()
        self._ingest_locks: dict[str, threading.Lock] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        self.database = state_database(settings)
        """The PostgreSQL database that holds collections when ``settings.store`` names one
        (``ledger.pg_registry.PgDatabase``: ``dsn``, ``pool``); ``None`` with ``faiss``."""
        self.collections = CollectionRegistry(
            settings.collections_dir,
            store_factory(settings),
            database=self.database,
            store=settings.store,
        )
        self.limits = ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        self.fetcher = fetcher or operator_fetcher(settings)
        """Fetches catalog images: any local path or URL the operator's catalog names."""
        self.query_fetcher = query_fetcher or QueryFetcher(settings)
        """Fetches ``RemoteURL`` queries, behind the address guard."""
        self.untrusted = UntrustedReads(settings)
        """Reads what the HTTP API names: upserted images, its sources and their images."""
        self.queries = query_log(settings, self.database)

    def export_model(
        self, spec: str | None = None, *, quantize: str | None = None, force: bool = False
    ) -> ExportResult:
        """Export a CLIP model's towers to ONNX (see ``models.export_model``)."""
        return models.export_model(self.settings, spec, quantize=quantize, force=force)

    def close(self) -> None:
        self.collections.close()
        self.untrusted.close()
        self.fetcher.close()
        self.query_fetcher.close()
        self.queries.close()
        if self.database is not None:
            self.database.close()

    # -- models --------------------------------------------------------------------------

    def embedder(self, spec: str | None = None) -> Embedder:
        """The embedder for ``spec`` (default: the configured model), loaded once."""
        key = spec or self.settings.model
        with self._lock:
            loaded = self._embedders.get(key)
            if loaded is not None:
                return loaded
            model_lock = self._model_locks.setdefault(key, threading.Lock())
        # Load outside the service lock: a slow model load must not stall other requests.
        with model_lock:
            if key not in self._embedders:
                embedder = self._load_embedder(key)
                with self._lock:
                    self._embedders[key] = embedder
            return self._embedders[key]

    def embedder_for(self, collection: Collection) -> Embedder:
        embedder = self.embedder(collection.config.model_spec)
        collection.check_model(embedder.identity)
        return embedder

    # -- collections (see collections.py) ------------------------------------------------

    def collection_names(self) -> list[str]:
        return self.collections.names()

    def collection(self, name: str) -> Collection:
        return self.collections.get(name)

    def create_collection(
        self,
        name: str,
        *,
        model: str | None = None,
        index: str | None = None,
        metric: str | None = None,
        store: str | None = None,
        source: SourceConfig | None = None,
        trusted: TrustedRefs | None = None,
    ) -> Collection:
        """A new, empty collection. Its ``source`` is untrusted unless ``trusted`` vouches for
        it: recorded as named over the HTTP API and checked now (``check_source``), so that it
        and the images it names are read, on every sync, by the rules of an untrusted upsert.
        """
        if source is not None and trusted is None:
            source = replace(source, untrusted=True)
        if source is not None and source.untrusted:
            check_source(source, self.settings)  # refused before any collection exists

        def config() -> CollectionConfig:
            spec = model or self.settings.model
            return new_config(
                self.settings,
                name,
                spec,
                self.embedder(spec).identity,
                store=store,
                index=index,
                metric=metric,
                source=source,
            )

        return self.collections.create(name, config)

    def delete_collection(self, name: str) -> None:
        self.collections.delete(name)

    def copy_collection(self, name: str, new_name: str) -> Collection:
        """A copy of a collection (its catalog, confirmed views, centering and calibration)
        under another name: what ``catalens eval --simulate-feedback`` feeds."""
        return self.collections.copy(name, new_name)

    def summaries(self) -> list[CollectionSummary]:
        return self.collections.summaries()

    # -- ingestion -----------------------------------------------------------------------

    def ingest(
        self,
        name: str,
        source: SourceConfig | None = None,
        *,
        model: str | None = None,
        index: str | None = None,
        metric: str | None = None,
        store: str | None = None,
        force: bool = False,
        progress: Progress | None = None,
        force_removals: bool = False,
        engine: str = "local",
        ray_address: str | None = None,
    ) -> IngestReport:
        """Bring collection ``name`` in line with ``source`` (or its configured source; what a
        given source leaves out is taken from it). Creates the collection when it does not
        exist; ``force`` rebuilds it from scratch, ``force_removals`` lets the run remove more
        than ``max_removed_share`` of the products. A sync (no ``source``) or a REST source
        revalidates cached image URLs, so an image changed behind the same URL is seen.
        ``engine`` loads and embeds the images in this process (``local``) or on a Ray
        cluster (``ray``, the ``ray`` extra: ``ray_address``, or a local cluster).
        """
        if engine not in ("local", "ray"):
            raise ConfigError(f"unknown ingest engine {engine!r}: use local or ray")
        syncing = source is None
        with self._ingest_lock(name):
            exists = name in self.collection_names()
            if exists and force:
                self.delete_collection(name)
                exists = False
            if exists:
                collection = self.collection(name)
                if model is not None:
                    collection.check_model(self.embedder(model).identity)
                if source is None:
                    source = collection.config.source
                    if source is None:
                        raise NoSourceError(f"collection {name!r} has no source configured")
                source = sources.with_stored_options(source, collection.config.source)
                catalog = self._open_source(source)
            else:
                if source is None:
                    raise ConfigError(f"collection {name!r} does not exist: give a --source")
                # A source that cannot be read fails before any collection is created.
                catalog = self._open_source(source)
                collection = self.create_collection(
                    name,
                    model=model,
                    index=index,
                    metric=metric,
                    store=store,
                    source=source,
                    trusted=TRUSTED_REFS,  # the caller's source (CLI, library), as it is
                )
            fetcher = self.untrusted.fetcher() if source.untrusted else self.fetcher
            ingestor = self._ingestor(collection, progress, fetcher)
            ingestor.revalidate_urls = syncing or is_rest(source)
            ingestor.max_removed_share = None if force_removals else self.settings.max_removed_share
            if engine == "ray":
                ingestor.engine = self._ray_engine(collection, source.untrusted, ray_address)
            report = ingestor.run(catalog)
            if source != collection.config.source:  # kept once it was read (and allowed)
                collection.update_source(source)
            collection.ledger.set_last_sync(sync_summary(report))
            collection.ledger.prune_vectors()
            if report.products_added or report.products_removed or report.images_embedded:
                recalibrate(collection)
            return report

    def sync(self, name: str, *, progress: Progress | None = None) -> IngestReport:
        return self.ingest(name, progress=progress)

    def create_backend_collection(self, name: str, endpoint: str) -> Collection:
        """A collection whose source is ``<rest_url>/<endpoint>``: the operator's shop backend
        (``rest_url``, seed 000's NESTJS_SERVER), read like a catalog the CLI named."""
        if not self.settings.rest_url:
            raise ConfigError("no rest_url is configured (CATALENS_REST_URL)")
        location = f"{self.settings.rest_url.rstrip('/')}/{endpoint.lstrip('/')}"
        source = SourceConfig(location=location, format="rest")
        return self.create_collection(name, source=source, trusted=TRUSTED_REFS)

    def catalog_fetcher(self, name: str) -> ImageFetcher:
        """The fetcher allowed to read collection ``name``'s catalog images: the operator's
        for a source the CLI or library named; else (a source named over the HTTP API, or no
        source: its images came by upsert) the guarded one that reads local files only under
        ``api_local_image_dirs``."""
        source = self.collection(name).config.source
        if source is not None and not source.untrusted:
            return self.fetcher
        return self.untrusted.fetcher()

    def upsert_products(
        self, name: str, products: Sequence[Product], *, trusted: TrustedRefs | None = None
    ) -> IngestReport:
        """Add or replace some products now, leaving the rest of the collection as it is.

        Their image refs are untrusted unless ``trusted`` vouches for them: URLs are fetched
        behind the address guard, and a local path outside ``api_local_image_dirs`` is
        refused (``BlockedPathError``) before anything is written."""
        collection = self.collection(name)
        if trusted is None:
            check_upsert_refs(products, self.settings.api_local_image_dirs)
        fetcher = self.fetcher if trusted is not None else self.untrusted.fetcher()
        with self._ingest_lock(name):
            ingestor = self._ingestor(collection, None, fetcher)
            ingestor.remove_missing = False
            return ingestor.run(products)

    def delete_products(self, name: str, product_ids: Sequence[str]) -> int:
        collection = self.collection(name)
        known = collection.ledger.product_ids()
        missing = [pid for pid in product_ids if pid not in known]
        collection.apply(ChangeSet(removed_products=[p for p in product_ids if p in known]))
        return len(product_ids) - len(missing)

    def _ingestor(
        self, collection: Collection, progress: Progress | None, fetcher: ImageFetcher
    ) -> Ingestor:
        ingestor = Ingestor(
            collection=collection,
            embedder=self.embedder_for(collection),
            fetcher=fetcher,
            limits=self.limits,
            batch_size=self.settings.batch_size,
            # Fetch and decode share the pool: downloads wait on the network, not the CPU.
            workers=self.settings.download_workers,
        )
        if progress is not None:
            ingestor.progress = progress
        return ingestor

    def _ray_engine(
        self, collection: Collection, untrusted: bool, address: str | None
    ) -> LoadEngine:
        # Imported here: ray is an optional extra, needed only for --engine ray.
        from catalens.ingest.ray_engine import RayEngine

        # Workers make their own model and fetcher from these (the settings travel pickled).
        fetchers = guarded_fetcher if untrusted else operator_fetcher
        return RayEngine(
            embedder_factory=partial(self._load_embedder, collection.config.model_spec),
            fetcher_factory=partial(fetchers, self.settings),
            address=address,
        )

    def _open_source(self, source: SourceConfig) -> CatalogSource:
        client = self.untrusted.rest_client() if source.untrusted else None
        return open_source(source, self.settings, rest_client=client)

    def _ingest_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._ingest_locks.setdefault(name, threading.Lock())

    # -- feedback (see feedback/verdicts.py and feedback/confirmed_photos.py) ------------

    def feedback(
        self,
        name: str,
        *,
        verdict: Verdict,
        product_id: str,
        query_id: str | None = None,
        image: QueryImage | None = None,
        user: str | None = None,
        recalibrate: bool = True,
    ) -> FeedbackResult:
        """Record a verdict on a photo (a kept ``query_id`` or an ``image``) and a product:
        ``correct``/``actually`` make it a confirmed view, ``wrong`` a hard negative."""
        if image is not None:
            check_query_image(image)
        collection = self.collection(name)
        parts = FeedbackParts(
            queries=self.queries,
            embedder=lambda: self.embedder_for(collection),
            limits=self.limits,
            lock=self._ingest_lock(name),
            max_views=self.settings.max_confirmed_views,
        )
        return give_feedback(
            collection,
            parts,
            verdict=verdict,
            product_id=product_id,
            query_id=query_id,
            photo=None if image is None else self._query_bytes(image),
            user=user,
            recalibrate=recalibrate,
        )

    def confirmed_views(self, name: str, product_id: str | None = None) -> list[ConfirmedPhoto]:
        """The confirmed views of one product (``ProductNotFoundError`` if there is no such
        product), or of every product."""
        collection = self.collection(name)
        if product_id is not None:
            photos.require_product(collection, product_id)
        return photos.list_photos(collection, product_id)

    def remove_views(
        self, name: str, product_id: str, view_ids: Sequence[int] | None = None
    ) -> list[int]:
        """Remove confirmed views of a product (all with ``view_ids=None``); ids removed."""
        collection = self.collection(name)
        with self._ingest_lock(name):  # feedback and syncs of a collection take turns
            removed = photos.remove_photos(
                collection, product_id, None if view_ids is None else list(view_ids)
            )
            if removed:
                refit_if_due(collection)
        return removed

    def recalibrate(self, name: str) -> Calibration | None:
        """Refit a collection's calibration now; ``None`` when it cannot be fitted."""
        return recalibrate(self.collection(name))

    # -- queries (see query_image.py and search.py) --------------------------------------

    def _query_bytes(self, image: QueryImage) -> bytes:
        return query_image.query_bytes(
            image, fetcher=self.query_fetcher, max_bytes=self.limits.max_bytes
        )

    def decode_query(
        self, image: QueryImage, *, draft_size: tuple[int, int] | None = None
    ) -> Image.Image:
        """A query image from bytes, a ``TrustedPath``, a ``RemoteURL`` (fetched behind the
        address guard) or an already decoded image; a plain ``str``/``Path`` is a TypeError.

        ``draft_size``: a large JPEG may be decoded at a reduced scale still at least this
        big (``Preprocessing.draft_size``), which is most of a phone photo's decode time.
        """
        return query_image.decode_query(
            image, fetcher=self.query_fetcher, limits=self.limits, draft_size=draft_size
        )

    def embed_image(self, image: QueryImage, *, model: str | None = None) -> NDArray[np.float32]:
        check_query_image(image)
        embedder = self.embedder(model)
        draft = draft_size([embedder.identity.preprocessing], [(1.0,)])
        decoded = self.decode_query(image, draft_size=draft)
        vector: NDArray[np.float32] = embed_images(embedder, [decoded])[0]
        return vector

    def embed_text(self, text: str, *, model: str | None = None) -> NDArray[np.float32]:
        return embed_text(self.embedder(model), text)

    def search(
        self,
        name: str,
        *,
        image: QueryImage | None = None,
        text: str | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        filters: Mapping[str, Any] | None = None,
        exclude: AbstractSet[str] = frozenset(),
        observe: bool = True,
    ) -> list[Hit]:
        """Search one collection, or every collection with ``name == "all"``; the photo is
        not kept for feedback (``query`` keeps it)."""
        return self.query(
            name,
            image=image,
            text=text,
            top_k=top_k,
            threshold=threshold,
            filters=filters,
            keep=False,
            exclude=exclude,
            observe=observe,
        ).hits

    def query(
        self,
        name: str,
        *,
        image: QueryImage | None = None,
        text: str | None = None,
        top_k: int | None = None,
        threshold: float | None = None,
        filters: Mapping[str, Any] | None = None,
        keep: bool = True,
        exclude: AbstractSet[str] = frozenset(),
        observe: bool = True,
    ) -> SearchResult:
        """Search like ``search``; with ``keep``, a photo query is kept for a while (see
        ``ledger/query_log.py``) and the result's ``query_id`` lets feedback refer to it.
        ``exclude``: products left out as if not in the catalog (evaluation); without
        ``observe`` the photo does not count as a query seen (domain centering)."""
        if (image is None) == (text is None):
            raise ConfigError("search needs exactly one of an image or a text")
        if image is not None:
            check_query_image(image)
        keep = keep and image is not None and self.queries.enabled
        if keep and image is not None:
            image = self._query_bytes(image)
        names = self.collection_names() if name == ALL else [name]
        opened = [self.collection(each) for each in names]  # unknown names fail first
        draft = draft_size(
            [c.config.model.preprocessing for c in opened],
            [c.config.search.query_zooms for c in opened],
        )
        k = top_k or self.settings.top_k
        found = search_collections(
            opened,
            photo=self.decode_query(image, draft_size=draft) if image is not None else None,
            text=text,
            embedder_for=self.embedder_for,
            top_k=k,
            threshold=threshold if threshold is not None else self.settings.threshold,
            filters=filters,
            exclude=exclude,
            observe=observe,
            everywhere=name == ALL,
        )
        query_id = None
        if keep and isinstance(image, bytes) and found.vectors:
            query_id = self.queries.keep(image, found.vectors)
        return SearchResult(query_id=query_id, hits=found.hits)


def operator_fetcher(settings: Settings) -> ImageFetcher:
    """The fetcher of the operator's catalogs: any local path or URL, one download cache."""
    return ImageFetcher(
        settings.cache_dir / "downloads",
        workers=settings.download_workers,
        timeout=settings.download_timeout,
        retries=settings.download_retries,
        max_bytes=settings.max_image_bytes,
    )


def build_service(settings: Settings | None = None) -> CatalensService:
    """Compose catalens from settings: the one place the object graph is wired."""
    resolved = settings or Settings()
    resolved.home.mkdir(parents=True, exist_ok=True)
    return CatalensService(resolved)


__all__ = [
    "ALL",
    "CatalensService",
    "CollectionSummary",
    "build_service",
]
