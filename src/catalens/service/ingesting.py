"""How a catalog run is wired: its collection, its source and fetcher, its engine, its record.

An ``IngestWiring`` finds (or creates) the collection a run goes to and opens its source,
picks the fetcher its images are read with (the operator's, or the guarded one for a source
named over the HTTP API), runs the pipeline on the local or the Ray engine, and records what
the run did. ``CatalensService.ingest`` holds the collection's ingest lock around it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from catalens.catalog.base import CatalogSource
from catalens.collection.collection import Collection
from catalens.collection.config import SourceConfig
from catalens.embedders.base import Embedder
from catalens.embedders.int8_guard import start_trial
from catalens.errors import ConfigError, NoSourceError
from catalens.ingest.decode import ImageLimits
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.pipeline import Ingestor, IngestReport, LoadEngine, Progress
from catalens.service import sources
from catalens.service.cold_start import calibrate_cold_start
from catalens.service.sources import is_rest, open_source, sync_summary
from catalens.service.trusted import TRUSTED_REFS, TrustedRefs
from catalens.service.untrusted import UntrustedReads
from catalens.service.upsert_refs import check_upsert_refs, guarded_fetcher
from catalens.settings import Settings
from catalens.types import Product

ENGINES = ("local", "ray")


def operator_fetcher(settings: Settings) -> ImageFetcher:
    """The fetcher of the operator's catalogs: any local path or URL, one download cache."""
    return ImageFetcher(
        settings.cache_dir / "downloads",
        workers=settings.download_workers,
        timeout=settings.download_timeout,
        retries=settings.download_retries,
        max_bytes=settings.max_image_bytes,
    )


class Collections(Protocol):
    """What finding or creating a run's collection needs of the service."""

    def collection_names(self) -> list[str]: ...
    def collection(self, name: str) -> Collection: ...
    def delete_collection(self, name: str) -> None: ...
    def embedder(self, spec: str | None = None) -> Embedder: ...
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
    ) -> Collection: ...


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"unknown ingest engine {engine!r}: use local or ray")


@dataclass(frozen=True)
class IngestWiring:
    """The parts every catalog run and upsert of one service is read and embedded with."""

    settings: Settings
    limits: ImageLimits
    fetcher: ImageFetcher
    """The operator's fetcher: any local path or URL a trusted catalog names."""
    untrusted: UntrustedReads
    load_embedder: Callable[[str], Embedder]
    """Loads a model by spec; what a Ray worker calls to make its own."""
    collections: Collections
    """The service's collections: where a run's collection is found or created."""

    def target(
        self,
        name: str,
        source: SourceConfig | None,
        *,
        model: str | None = None,
        index: str | None = None,
        metric: str | None = None,
        store: str | None = None,
        force: bool = False,
    ) -> tuple[Collection, SourceConfig, CatalogSource]:
        """The collection a run of ``source`` (none: its configured one) goes to, the source
        in full (what a given one leaves out taken from the stored one) and its catalog,
        opened. A new collection is created only once its source could be opened; ``force``
        deletes an existing one first."""
        if source is not None:
            source = source.resolved()  # given here: relative to this process's folder
        collections = self.collections
        exists = name in collections.collection_names()
        if exists and force:
            collections.delete_collection(name)
            exists = False
        if not exists:
            if source is None:
                raise ConfigError(f"collection {name!r} does not exist: give a --source")
            catalog = self.open_source(source)  # unreadable: fails before any collection
            collection = collections.create_collection(
                name,
                model=model,
                index=index,
                metric=metric,
                store=store,
                source=source,
                trusted=TRUSTED_REFS,  # the caller's source (CLI, library), as it is
            )
            return collection, source, catalog
        collection = collections.collection(name)
        if model is not None:
            collection.check_model(collections.embedder(model).identity)
        stored = collection.config.source
        stored = None if stored is None else sources.migrated(stored)
        if source is None:
            source = stored
            if source is None:
                raise NoSourceError(f"collection {name!r} has no source configured")
        source = sources.with_stored_options(source, stored)
        return collection, source, self.open_source(source)

    def backend_source(self, endpoint: str) -> SourceConfig:
        """The source ``<rest_url>/<endpoint>``: the operator's shop backend (``rest_url``)."""
        rest_url = self.settings.rest_url
        if not rest_url:
            raise ConfigError("no rest_url is configured (CATALENS_REST_URL)")
        return SourceConfig(
            location=f"{rest_url.rstrip('/')}/{endpoint.lstrip('/')}", format="rest"
        )

    def open_source(self, source: SourceConfig) -> CatalogSource:
        client = self.untrusted.rest_client() if source.untrusted else None
        return open_source(source, self.settings, rest_client=client)

    def fetcher_for(self, source: SourceConfig | None) -> ImageFetcher:
        """The operator's fetcher for a source the CLI or library named; else (a source named
        over the HTTP API, or none: the images came by upsert) the guarded one."""
        if source is not None and not source.untrusted:
            return self.fetcher
        return self.untrusted.fetcher()

    def ingestor(
        self,
        collection: Collection,
        embedder: Embedder,
        fetcher: ImageFetcher,
        progress: Progress | None = None,
    ) -> Ingestor:
        ingestor = Ingestor(
            collection=collection,
            embedder=embedder,
            fetcher=fetcher,
            limits=self.limits,
            batch_size=self.settings.batch_size,
            # Fetch and decode share the pool: downloads wait on the network, not the CPU.
            workers=self.settings.download_workers,
        )
        if progress is not None:
            ingestor.progress = progress
        return ingestor

    def upsert_fetcher(
        self, products: Sequence[Product], trusted: TrustedRefs | None
    ) -> ImageFetcher:
        """The fetcher an upsert's images are read with: the operator's when ``trusted``
        vouches for them, else the guarded one, once every local path in them is checked
        (``BlockedPathError`` before anything is written)."""
        if trusted is not None:
            return self.fetcher
        check_upsert_refs(products, self.settings.api_local_image_dirs)
        return self.untrusted.fetcher()

    def upsert(
        self,
        collection: Collection,
        embedder: Embedder,
        fetcher: ImageFetcher,
        products: Iterable[Product],
    ) -> IngestReport:
        """Add or replace ``products``, leaving the rest of the collection as it is."""
        ingestor = self.ingestor(collection, embedder, fetcher)
        ingestor.remove_missing = False
        return ingestor.run(products)

    def run(
        self,
        collection: Collection,
        embedder: Embedder,
        source: SourceConfig,
        catalog: CatalogSource,
        *,
        syncing: bool,
        progress: Progress | None = None,
        force_removals: bool = False,
        engine: str = "local",
        ray_address: str | None = None,
    ) -> IngestReport:
        """Bring ``collection`` in line with ``catalog`` (opened from ``source``) and record
        the run: the source (kept once it was read, and allowed), the last-sync summary, and
        a refitted calibration when the catalog changed."""
        fetcher = self.untrusted.fetcher() if source.untrusted else self.fetcher
        # A new collection's first local run lets the int8 guard choose its CLIP runtime.
        trial = start_trial(embedder, collection.config.model) if engine == "local" else None
        ingestor = self.ingestor(collection, trial or embedder, fetcher, progress)
        # A sync or a REST source revalidates cached image URLs: an image changed behind
        # the same URL is seen.
        ingestor.revalidate_urls = syncing or is_rest(source)
        ingestor.max_removed_share = None if force_removals else self.settings.max_removed_share
        if engine == "ray":
            ingestor.engine = self.ray_engine(collection, source.untrusted, ray_address)
        report = ingestor.run(catalog)
        agreement = trial.finish() if trial is not None else None
        if trial is not None and agreement is not None:
            collection.update_model(trial.decided_identity())
            report.model_runtime = agreement.line()
        if source != collection.config.source:
            collection.update_source(source)
        collection.ledger.set_last_sync(sync_summary(report))
        collection.ledger.prune_vectors()
        # Any change to what is searchable (an image changed to one already embedded too);
        # cheap when few products changed: the calibration reuses the others' views.
        changed = report.images_embedded + report.images_reused + report.images_removed
        if report.products_added or report.products_removed or changed:
            # On the runtime the int8 guard chose, which the collection's queries will use.
            calibrate_cold_start(
                collection,
                trial or embedder,
                fetcher,
                self.limits,
                progress,
                views=self.settings.calibration_views,
            )
        return report

    def ray_engine(
        self, collection: Collection, untrusted: bool, address: str | None
    ) -> LoadEngine:
        # Imported here: ray is an optional extra, needed only for --engine ray.
        from catalens.ingest.ray_engine import RayEngine

        # Workers make their own model and fetcher from these (the settings travel pickled).
        fetchers = guarded_fetcher if untrusted else operator_fetcher
        return RayEngine(
            embedder_factory=partial(self.load_embedder, collection.config.model_spec),
            fetcher_factory=partial(fetchers, self.settings),
            address=address,
        )
