"""The service object every layer (CLI, HTTP API, web UI) talks to.

``build_service(settings)`` composes the object graph once: embedders are loaded lazily and
shared per model, collections are opened once and cached, one fetcher (with its download
cache) serves every ingest.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.catalog import ColumnMapping, open_catalog
from catalens.catalog.base import CatalogSource
from catalens.collection.collection import (
    ChangeSet,
    Collection,
    CollectionConfig,
    SourceConfig,
    check_name,
    copy_collection_dir,
    remove_collection_dir,
)
from catalens.embedders import ClipRuntime, Preprocessing, load_embedder
from catalens.embedders.base import Embedder, TextEmbedder, embed_images, has_text_tower
from catalens.embedders.onnx_export import ExportResult
from catalens.errors import CatalensError, CollectionNotFoundError, ConfigError, ModelError
from catalens.feedback import confirmed_photos as views
from catalens.feedback.confirmed_photos import ConfirmedView
from catalens.feedback.verdicts import (
    FeedbackResult,
    Verdict,
    give_feedback,
    observe_query,
    query_bytes,
    recalibrate,
    refit_if_due,
)
from catalens.ingest.decode import ImageLimits, decode_image
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.pipeline import Ingestor, IngestReport, Progress
from catalens.ledger.query_log import QueryLog, QueryVectors, model_key
from catalens.search.calibration import Calibration
from catalens.search.query_crops import SearchOptions, query_views
from catalens.settings import Settings
from catalens.stores.base import VectorStore
from catalens.stores.faiss_store import FaissOptions, FaissStore
from catalens.types import Hit, Product, SearchResult

EmbedderLoader = Callable[[str], Embedder]
QueryImage = bytes | Path | str | Image.Image
ALL = "all"


PG_SCHEMES = ("postgresql://", "postgres://")


def store_factory(settings: Settings) -> Callable[[CollectionConfig, Path], VectorStore]:
    """Opens a collection's store as ``config.store`` says: ``faiss`` (files in the
    collection's folder), a ``postgresql://`` DSN, or ``postgres-local`` (an embedded
    PostgreSQL under ``settings.home / "postgres"``). pgvector is imported only when used."""

    def open_store(config: CollectionConfig, directory: Path) -> VectorStore:
        spec = config.store.strip()
        if spec == "faiss":
            options = FaissOptions(
                index_type=config.index,  # type: ignore[arg-type]
                metric=config.metric,  # type: ignore[arg-type]
                hnsw_m=settings.hnsw_m,
                hnsw_ef_construction=settings.hnsw_ef_construction,
                hnsw_ef_search=settings.hnsw_ef_search,
                ivf_nlist=settings.ivf_nlist,
                ivf_nprobe=settings.ivf_nprobe,
            )
            return FaissStore.open(directory / "faiss", dim=config.model.dim, options=options)
        if spec == "postgres-local":
            from catalens.stores.pg_local import local_dsn

            dsn = local_dsn(settings.home / "postgres")
        elif spec.startswith(PG_SCHEMES):
            dsn = spec
        else:
            raise ConfigError(
                f"unknown store {config.store!r} for collection {config.name!r}: use faiss,"
                " a postgresql:// DSN, or postgres-local"
            )
        try:
            from catalens.stores.pgvector_store import PgVectorStore
        except ImportError as exc:  # the message carries the install hint
            raise ConfigError(str(exc)) from exc
        return PgVectorStore(
            dsn,
            config.name,
            config.model.dim,
            index=config.index,  # type: ignore[arg-type]
            metric=config.metric,  # type: ignore[arg-type]
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
            model=config.model,
            key=repr(config.created_at),
        )

    return open_store


faiss_factory = store_factory
"""The former name, when FAISS was the only store."""


@dataclass(frozen=True)
class CollectionSummary:
    name: str
    model: str
    dim: int
    index: str
    store: str
    products: int
    images: int
    failed_images: int
    last_sync: Mapping[str, Any] | None = None


class CatalensService:
    """Collections, models and ingestion behind one object. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedder_loader: EmbedderLoader | None = None,
        fetcher: ImageFetcher | None = None,
    ) -> None:
        self.settings = settings
        self._load_embedder = embedder_loader or self._default_loader
        self._embedders: dict[str, Embedder] = {}
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self._ingest_locks: dict[str, threading.Lock] = {}
        self._model_locks: dict[str, threading.Lock] = {}
        self._store_factory = store_factory(settings)
        self.limits = ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        self.fetcher = fetcher or ImageFetcher(
            settings.cache_dir / "downloads",
            workers=settings.download_workers,
            timeout=settings.download_timeout,
            retries=settings.download_retries,
            max_bytes=settings.max_image_bytes,
        )
        self.queries = QueryLog(
            settings.home / "queries.sqlite",
            retention_seconds=settings.query_retention_seconds,
            retention_max=settings.query_retention_max,
        )

    def _default_loader(self, spec: str) -> Embedder:
        return load_embedder(
            spec,
            device=self.settings.device,
            batch_size=self.settings.batch_size,
            local_files_only=self.settings.hf_offline,
            clip=ClipRuntime(
                runtime=self.settings.clip_runtime,
                auto_export=self.settings.onnx_auto_export,
                models_dir=self.settings.models_dir,
            ),
        )

    def export_model(
        self, spec: str | None = None, *, quantize: str | None = None, force: bool = False
    ) -> ExportResult:
        """Export a CLIP model's towers to ONNX under ``settings.models_dir`` (see
        ``onnx_export``); what is already exported for its revision is reused."""
        from catalens.embedders.clip_onnx import split_variant
        from catalens.embedders.onnx_export import export_clip

        source, variant = split_variant(spec or self.settings.model)
        return export_clip(
            source,
            models_dir=self.settings.models_dir,
            quantize=quantize or (variant if variant != "fp32" else None),
            local_files_only=self.settings.hf_offline,
            force=force,
        )

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                collection.close()
            self._collections.clear()
        self.fetcher.close()
        self.queries.close()

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

    # -- collections ---------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self.settings.collections_dir / check_name(name)

    def collection_names(self) -> list[str]:
        root = self.settings.collections_dir
        if not root.is_dir():
            return []
        return sorted(
            p.name for p in root.iterdir() if (p / "collection.json").is_file() and p.name[0] != "."
        )

    def collection(self, name: str) -> Collection:
        with self._lock:
            cached = self._collections.get(name)
            if cached is not None:
                return cached
            directory = self._dir(name)
            if not (directory / "collection.json").is_file():
                raise CollectionNotFoundError(f"no collection named {name!r}")
            opened = Collection.open(directory, self._store_factory)
            self._collections[name] = opened
            return opened

    def create_collection(
        self,
        name: str,
        *,
        model: str | None = None,
        index: str | None = None,
        metric: str | None = None,
        store: str | None = None,
        source: SourceConfig | None = None,
    ) -> Collection:
        directory = self._dir(name)
        with self._lock:
            if (directory / "collection.json").is_file():
                raise ConfigError(f"collection {name!r} already exists")
            spec = model or self.settings.model
            embedder = self.embedder(spec)
            config = CollectionConfig(
                name=name,
                model_spec=spec,
                model=embedder.identity,
                store=store or self.settings.store,
                index=index or self.settings.index,
                metric=metric or self.settings.metric,
                source=source,
                search=SearchOptions(
                    query_zooms=self.settings.query_zooms,
                    centering=self.settings.centering,
                    query_flip=self.settings.query_flip,
                    aggregation=self.settings.aggregation,
                    blend_weight=self.settings.blend_weight,
                ),
            )
            created = Collection.create(directory, config, self._store_factory)
            self._collections[name] = created
            return created

    def delete_collection(self, name: str) -> None:
        try:
            collection: Collection | None = self.collection(name)
        except CollectionNotFoundError:
            raise
        except CatalensError:
            collection = None  # a store that cannot open is deleted with its folder
        with self._lock:
            self._collections.pop(name, None)
            if collection is not None:
                with collection.lock.write():
                    collection.store.drop()
                    collection.close()
            remove_collection_dir(self._dir(name))

    def copy_collection(self, name: str, new_name: str) -> Collection:
        """A copy of a collection (its catalog, confirmed views, centering and calibration)
        under another name: what ``catalens eval --simulate-feedback`` feeds."""
        source = self.collection(name)
        with self._lock, source.lock.write():
            source.save_query_mean()
            source.ledger.checkpoint()
            copy_collection_dir(source.directory, self._dir(new_name), new_name)
        return self.collection(new_name)

    def summaries(self) -> list[CollectionSummary]:
        result = []
        for name in self.collection_names():
            info = self.collection(name).info()
            result.append(
                CollectionSummary(
                    name=name,
                    model=info["model"],
                    dim=info["dim"],
                    index=info["index"],
                    store=info["store"],
                    products=info["products"],
                    images=info["images"],
                    failed_images=info["failed_images"],
                    last_sync=info["last_sync"],
                )
            )
        return result

    # -- ingestion -----------------------------------------------------------------------

    def open_source(self, source: SourceConfig) -> CatalogSource:
        mapping = ColumnMapping(**source.mapping) if source.mapping else None
        return open_catalog(
            source.location,
            format=source.format,  # type: ignore[arg-type]
            mapping=mapping,
            where=source.where,
            options=source.options,
        )

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
    ) -> IngestReport:
        """Bring collection ``name`` in line with ``source`` (or its configured source).

        Creates the collection when it does not exist; ``force`` rebuilds it from scratch.
        A sync (no ``source`` given) or a REST source revalidates cached image URLs, so an
        image changed behind the same URL is seen.
        """
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
                        raise ConfigError(f"collection {name!r} has no source configured")
                catalog = self.open_source(source)
                if source != collection.config.source:
                    collection.update_source(source)
            else:
                if source is None:
                    raise ConfigError(f"collection {name!r} does not exist: give a --source")
                # A source that cannot be read fails before any collection is created.
                catalog = self.open_source(source)
                collection = self.create_collection(
                    name, model=model, index=index, metric=metric, store=store, source=source
                )
            ingestor = self._ingestor(collection, progress)
            ingestor.revalidate_urls = syncing or _is_rest(source)
            report = ingestor.run(catalog)
            collection.ledger.set_meta("last_sync", json.dumps(_sync_summary(report)))
            collection.ledger.prune_vectors()
            if report.products_added or report.products_removed or report.images_embedded:
                recalibrate(collection)
            return report

    def sync(self, name: str, *, progress: Progress | None = None) -> IngestReport:
        return self.ingest(name, progress=progress)

    def upsert_products(self, name: str, products: Sequence[Product]) -> IngestReport:
        """Add or replace some products now, leaving the rest of the collection as it is."""
        collection = self.collection(name)
        with self._ingest_lock(name):
            ingestor = self._ingestor(collection, None)
            ingestor.remove_missing = False
            return ingestor.run(products)

    def delete_products(self, name: str, product_ids: Sequence[str]) -> int:
        collection = self.collection(name)
        known = collection.ledger.product_ids()
        missing = [pid for pid in product_ids if pid not in known]
        collection.apply(ChangeSet(removed_products=[p for p in product_ids if p in known]))
        return len(product_ids) - len(missing)

    def _ingestor(self, collection: Collection, progress: Progress | None) -> Ingestor:
        ingestor = Ingestor(
            collection=collection,
            embedder=self.embedder_for(collection),
            fetcher=self.fetcher,
            limits=self.limits,
            batch_size=self.settings.batch_size,
            # Fetch and decode share the pool: downloads wait on the network, not the CPU.
            workers=self.settings.download_workers,
        )
        if progress is not None:
            ingestor.progress = progress
        return ingestor

    def _ingest_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._ingest_locks.setdefault(name, threading.Lock())

    # -- feedback (see feedback.py and views.py) -----------------------------------------

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
        return give_feedback(
            self,
            name,
            verdict=verdict,
            product_id=product_id,
            query_id=query_id,
            image=image,
            user=user,
            recalibrate=recalibrate,
        )

    def feedback_lock(self, name: str) -> threading.Lock:
        """Serialises feedback with syncs of the same collection."""
        return self._ingest_lock(name)

    def confirmed_views(self, name: str, product_id: str | None = None) -> list[ConfirmedView]:
        """The confirmed views of one product (``ProductNotFoundError`` if there is no such
        product), or of every product."""
        collection = self.collection(name)
        if product_id is not None:
            views.require_product(collection, product_id)
        return views.list_views(collection, product_id)

    def remove_views(
        self, name: str, product_id: str, view_ids: Sequence[int] | None = None
    ) -> list[int]:
        """Remove confirmed views of a product (all with ``view_ids=None``); ids removed."""
        collection = self.collection(name)
        with self.feedback_lock(name):
            removed = views.remove_views(
                collection, product_id, None if view_ids is None else list(view_ids)
            )
            if removed:
                refit_if_due(self, collection)
        return removed

    def recalibrate(self, name: str) -> Calibration | None:
        """Refit a collection's calibration now; ``None`` when it cannot be fitted."""
        return recalibrate(self.collection(name))

    # -- queries -------------------------------------------------------------------------

    def decode_query(
        self, image: QueryImage, *, draft_size: tuple[int, int] | None = None
    ) -> Image.Image:
        """A query image from bytes, a path, an http(s) URL, or an already decoded image.

        ``draft_size``: a large JPEG may be decoded at a reduced scale still at least this
        big (``Preprocessing.draft_size``), which is most of a phone photo's decode time.
        """
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        source = "query image" if isinstance(image, bytes) else str(image)
        data = query_bytes(self, image)
        return decode_image(data, source=source, limits=self.limits, draft_size=draft_size)

    def embed_image(self, image: QueryImage, *, model: str | None = None) -> NDArray[np.float32]:
        embedder = self.embedder(model)
        draft = _draft_size([embedder.identity.preprocessing], [(1.0,)])
        decoded = self.decode_query(image, draft_size=draft)
        vector: NDArray[np.float32] = embed_images(embedder, [decoded])[0]
        return vector

    def embed_text(self, text: str, *, model: str | None = None) -> NDArray[np.float32]:
        embedder = self.embedder(model)
        if not has_text_tower(embedder) or not isinstance(embedder, TextEmbedder):
            raise ModelError(f"model {embedder.identity.name} has no text tower: search by image")
        vector: NDArray[np.float32] = embedder.embed_texts([text])[0]
        return vector

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
        ``querylog.py``) and the result's ``query_id`` lets feedback refer to it.
        ``exclude``: products left out as if not in the catalog (evaluation); without
        ``observe`` the photo does not count as a query seen (domain centering)."""
        if (image is None) == (text is None):
            raise ConfigError("search needs exactly one of an image or a text")
        keep = keep and image is not None and self.queries.enabled
        if keep and image is not None:
            image = query_bytes(self, image)
        k = top_k or self.settings.top_k
        cutoff = threshold if threshold is not None else self.settings.threshold
        names = self.collection_names() if name == ALL else [name]
        opened = [self.collection(each) for each in names]  # unknown names fail first
        draft = _draft_size(
            [c.config.model.preprocessing for c in opened],
            [c.config.search.query_zooms for c in opened],
        )
        decoded = self.decode_query(image, draft_size=draft) if image is not None else None
        vectors: dict[tuple[str, tuple[float, ...], bool], NDArray[np.float32]] = {}
        kept: dict[str, QueryVectors] = {}
        hits: list[Hit] = []
        for collection in opened:
            each = collection.name
            zooms = collection.config.search.query_zooms
            flip = collection.config.search.query_flip
            key = (collection.config.model_spec, zooms, flip)
            if key not in vectors:
                embedder = self.embedder_for(collection)
                if decoded is not None:
                    vectors[key], plain = query_views(embedder, decoded, zooms, flip=flip)
                    kept[model_key(collection.config.model)] = QueryVectors(vectors[key], plain)
                elif isinstance(embedder, TextEmbedder) and has_text_tower(embedder):
                    vectors[key] = embedder.embed_texts([text or ""])[0]
                elif name == ALL:
                    continue
                else:
                    raise ModelError(
                        f"collection {each!r} uses {embedder.identity.name}, which has no "
                        "text tower: search it by image"
                    )
            if decoded is not None and observe:
                observe_query(collection, vectors[key])
            hits.extend(
                collection.search(
                    vectors[key],
                    top_k=k,
                    threshold=cutoff,
                    filters=filters,
                    center=text is None,
                    exclude=exclude,
                )
            )
        if len(names) > 1:
            hits.sort(key=lambda hit: -hit.score)
            hits = [
                Hit(**{**asdict(hit), "rank": rank}) for rank, hit in enumerate(hits[:k], start=1)
            ]
        query_id = None
        if keep and isinstance(image, bytes) and kept:
            query_id = self.queries.keep(image, kept)
        return SearchResult(query_id=query_id, hits=hits)


def _draft_size(
    preprocessings: Sequence[Mapping[str, Any]], zooms: Sequence[Sequence[float]]
) -> tuple[int, int] | None:
    """The JPEG draft size that serves every model (and its zoom views) a query goes to;
    ``None`` (decode in full) when a model's preprocessing is not known."""
    sizes = []
    for card, each in zip(preprocessings, zooms, strict=True):
        try:
            sizes.append(Preprocessing.from_card(card).draft_size(each))
        except (ModelError, KeyError):
            return None
    return max(sizes) if sizes else None


def _is_rest(source: SourceConfig) -> bool:
    if source.format is not None:
        return source.format == "rest"
    return source.location.lower().startswith(("http://", "https://"))


def _sync_summary(report: IngestReport) -> dict[str, Any]:
    return {
        "finished_at": time.time(),
        "seconds": round(report.seconds, 3),
        "products": report.products_seen,
        "added": report.products_added,
        "removed": report.products_removed,
        "images_embedded": report.images_embedded,
        "images_failed": report.images_failed,
        "rejected_rows": len(report.source.rejected) if report.source else 0,
    }


def build_service(settings: Settings | None = None) -> CatalensService:
    """Compose catalens from settings: the one place the object graph is wired."""
    resolved = settings or Settings()
    resolved.home.mkdir(parents=True, exist_ok=True)
    return CatalensService(resolved)


__all__ = [
    "ALL",
    "CatalensError",
    "CatalensService",
    "CollectionSummary",
    "build_service",
]
