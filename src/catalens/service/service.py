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

from catalens.collection.collection import Collection
from catalens.collection.config import CollectionConfig, SourceConfig, check_name
from catalens.collection.refit import recalibrate
from catalens.embedders.base import Embedder
from catalens.embedders.int8_guard import for_collection
from catalens.embedders.onnx_export import ExportResult
from catalens.errors import AlreadyExistsError
from catalens.feedback.confirmed_photos import ConfirmedPhoto
from catalens.feedback.trust import TRUSTED, Trust
from catalens.feedback.verdicts import FeedbackResult, Verdict
from catalens.ingest.decode import ImageLimits
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.pipeline import IngestReport, Progress
from catalens.ledger.state import ChangeSet, PendingVerdictRow
from catalens.search.calibration import Calibration
from catalens.service import models, query_image
from catalens.service.collections import CollectionRegistry, CollectionSummary, new_config
from catalens.service.feedback_ops import FeedbackOps
from catalens.service.ingesting import IngestWiring, check_engine, operator_fetcher
from catalens.service.query_image import QueryFetcher, QueryImage
from catalens.service.querying import ALL, QueryOps
from catalens.service.search import embed_text
from catalens.service.sources import check_source
from catalens.service.stores import query_log, state_database, store_factory
from catalens.service.trusted import TRUSTED_REFS, TrustedRefs
from catalens.service.untrusted import UntrustedReads
from catalens.settings import Settings
from catalens.types import Hit, Product, SearchResult

EmbedderLoader = Callable[[str], Embedder]


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
        self.query_limits = query_image.query_limits(settings)
        """What a query photo may cost (``max_query_pixels`` decoded at most)."""
        self.decode_budget = query_image.query_budget(settings)
        """Query pixels being decoded at once, across threads (``decode_pixel_budget``)."""
        self.fetcher = fetcher or operator_fetcher(settings)
        """Fetches catalog images: any local path or URL the operator's catalog names."""
        self.query_fetcher = query_fetcher or QueryFetcher(settings)
        """Fetches ``RemoteURL`` queries, behind the address guard."""
        self.untrusted = UntrustedReads(settings)
        """Reads what the HTTP API names: upserted images, its sources and their images."""
        self.queries = query_log(settings, self.database)
        self._wiring = IngestWiring(
            settings, self.limits, self.fetcher, self.untrusted, self._load_embedder, self
        )
        self._querying = QueryOps(
            settings,
            self.limits,
            self.query_limits,
            self.decode_budget,
            self.query_fetcher,
            self.queries,
            self,
        )
        self._feedback = FeedbackOps(
            settings, self.limits, self.queries, self._querying.photo_bytes, self._ingest_lock, self
        )

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
        """The collection's model, on the runtime it recorded (``int8_guard.for_collection``)."""
        embedder = self.embedder(collection.config.model_spec)
        collection.check_model(embedder.identity)
        return for_collection(embedder, collection.config.model)

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
        if source is not None:
            source = source.resolved()  # a relative path: from this process's folder
        if source is not None and trusted is None:
            source = replace(source, untrusted=True)
        if source is not None and source.untrusted:
            check_source(source, self.settings)  # refused before any collection exists
        check_name(name)
        if name in self.collection_names():  # answered at once, not after loading a model
            raise AlreadyExistsError(f"collection {name!r} already exists")
        spec = model or self.settings.model
        # The model loads here, outside the registry's lock: a slow load (a hub's retries)
        # must not hold up the searches of other collections, which open through that lock.
        identity = self.embedder(spec).identity

        def config() -> CollectionConfig:
            return new_config(
                self.settings,
                name,
                spec,
                identity,
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
        check_engine(engine)
        with self._ingest_lock(name):
            collection, resolved, catalog = self._wiring.target(
                name, source, model=model, index=index, metric=metric, store=store, force=force
            )
            return self._wiring.run(
                collection,
                self.embedder_for(collection),
                resolved,
                catalog,
                syncing=source is None,
                progress=progress,
                force_removals=force_removals,
                engine=engine,
                ray_address=ray_address,
            )

    def sync(
        self, name: str, *, progress: Progress | None = None, force_removals: bool = False
    ) -> IngestReport:
        """Bring collection ``name`` in line with its configured source; ``force_removals``
        lets it remove more than ``max_removed_share`` of the products."""
        return self.ingest(name, progress=progress, force_removals=force_removals)

    def create_backend_collection(self, name: str, endpoint: str) -> Collection:
        """A collection whose source is ``<rest_url>/<endpoint>``: the operator's shop backend
        (``rest_url``, seed 000's NESTJS_SERVER), read like a catalog the CLI named."""
        source = self._wiring.backend_source(endpoint)
        return self.create_collection(name, source=source, trusted=TRUSTED_REFS)

    def catalog_fetcher(self, name: str) -> ImageFetcher:
        """The fetcher allowed to read collection ``name``'s catalog images: the operator's
        for a source the CLI or library named; else (a source named over the HTTP API, or no
        source: its images came by upsert) the guarded one that reads local files only under
        ``api_local_image_dirs``."""
        return self._wiring.fetcher_for(self.collection(name).config.source)

    def upsert_products(
        self, name: str, products: Sequence[Product], *, trusted: TrustedRefs | None = None
    ) -> IngestReport:
        """Add or replace some products now, leaving the rest of the collection as it is.

        Their image refs are untrusted unless ``trusted`` vouches for them: URLs are fetched
        behind the address guard, and a local path outside ``api_local_image_dirs`` is
        refused (``BlockedPathError``) before anything is written."""
        collection = self.collection(name)
        fetcher = self._wiring.upsert_fetcher(products, trusted)
        with self._ingest_lock(name):
            return self._wiring.upsert(collection, self.embedder_for(collection), fetcher, products)

    def delete_products(self, name: str, product_ids: Sequence[str]) -> int:
        collection = self.collection(name)
        known = collection.ledger.product_ids()
        missing = [pid for pid in product_ids if pid not in known]
        collection.apply(ChangeSet(removed_products=[p for p in product_ids if p in known]))
        return len(product_ids) - len(missing)

    def _ingest_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._ingest_locks.setdefault(name, threading.Lock())

    # -- feedback (see feedback_ops.py) --------------------------------------------------

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
        trust: Trust = TRUSTED,
    ) -> FeedbackResult:
        """Record a verdict on a photo (a kept ``query_id`` or an ``image``) and a product:
        ``correct``/``actually`` make it a confirmed view, ``wrong`` a hard negative. An
        untrusted verdict may wait as a pending verdict (``feedback/trust.py``)."""
        return self._feedback.give(
            name,
            verdict=verdict,
            product_id=product_id,
            query_id=query_id,
            image=image,
            user=user,
            recalibrate=recalibrate,
            trust=trust,
        )

    def pending_verdicts(self, name: str) -> list[PendingVerdictRow]:
        """The verdicts waiting for review (untrusted, not applied), oldest first."""
        return self.collection(name).ledger.pending_verdicts()

    def pending_photo(self, name: str, pending_id: int) -> bytes | None:
        return self.collection(name).ledger.pending_photo(pending_id)

    def decide_pending(self, name: str, pending_id: int, *, approve: bool) -> FeedbackResult | None:
        """Approve (apply) or reject (drop) a pending verdict; ``None`` when there is none."""
        return self._feedback.decide(name, pending_id, approve=approve)

    def confirmed_views(self, name: str, product_id: str | None = None) -> list[ConfirmedPhoto]:
        """The confirmed views of one product (``ProductNotFoundError`` if there is no such
        product), or of every product."""
        return self._feedback.confirmed_views(name, product_id)

    def remove_views(
        self, name: str, product_id: str, view_ids: Sequence[int] | None = None
    ) -> list[int]:
        """Remove confirmed views of a product (all with ``view_ids=None``); ids removed."""
        return self._feedback.remove_views(name, product_id, view_ids)

    def recalibrate(self, name: str) -> Calibration | None:
        """Refit a collection's calibration now; ``None`` when it cannot be fitted."""
        return recalibrate(self.collection(name))

    # -- queries (see query_image.py and search.py) --------------------------------------

    def decode_query(
        self, image: QueryImage, *, draft_size: tuple[int, int] | None = None
    ) -> Image.Image:
        """A query image from bytes, a ``TrustedPath``, a ``RemoteURL`` (fetched behind the
        address guard) or an already decoded image; a plain ``str``/``Path`` is a TypeError.

        ``draft_size``: a large JPEG may be decoded at a reduced scale still at least this
        big (``Preprocessing.draft_size``), which is most of a phone photo's decode time.
        """
        return self._querying.decode(image, draft_size=draft_size)

    def embed_image(self, image: QueryImage, *, model: str | None = None) -> NDArray[np.float32]:
        return self._querying.embed_image(image, model=model)

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
        return self._querying.run(
            name,
            image=image,
            text=text,
            top_k=top_k,
            threshold=threshold,
            filters=filters,
            keep=keep,
            exclude=exclude,
            observe=observe,
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
