"""What the routes share: the app state built by the lifespan, and small request helpers.

``AppState`` holds the one ``CatalensService``, the job manager, the scheduler and the guarded
fetcher for search-by-URL. Routes get it through the ``StateDep`` dependency (tests may
override ``get_state``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import Depends, Request

from catalens import __version__
from catalens.api.errors import ApiError
from catalens.api.jobs import JobManager, Scheduler
from catalens.api.metrics import ApiMetrics
from catalens.collection.collection import Collection, SourceConfig
from catalens.errors import BlockedURLError, CollectionNotFoundError
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.url_guard import AddressGuard
from catalens.service.service import CatalensService
from catalens.settings import Settings

__all__ = [
    "AppState",
    "QueryFetcher",
    "StateDep",
    "default_collection",
    "get_state",
    "image_link",
    "link_for",
]

log = logging.getLogger("catalens.api")

REST_COLLECTION = "medicines"
"""The collection created from ``rest_url`` when no default collection is named."""


class QueryFetcher:
    """Downloads the image of a search-by-URL query, behind the address guard.

    Loopback, private, link-local and metadata addresses are refused (after DNS resolution
    and on every redirect) unless their host is in ``CATALENS_URL_ALLOWLIST``. Each query gets
    a fresh, throw-away fetcher cache: nothing a user asked for is kept on disk.
    """

    def __init__(self, settings: Settings) -> None:
        self._guard = AddressGuard(allow_hosts=frozenset(settings.url_allowlist))
        self._timeout = settings.url_fetch_timeout
        self._max_bytes = settings.max_upload_bytes
        self._client = httpx.Client(
            timeout=settings.url_fetch_timeout,
            follow_redirects=False,
            headers={"User-Agent": f"catalens/{__version__} (search by URL)"},
        )
        self._root = Path(tempfile.mkdtemp(prefix="catalens-queries-"))

    def fetch(self, url: str) -> bytes:
        """The bytes behind an http(s) URL; ``FetchError``/``BlockedURLError`` otherwise."""
        if not url.lower().startswith(("http://", "https://")):
            raise BlockedURLError(url, "only http and https URLs can be searched by URL")
        with tempfile.TemporaryDirectory(dir=self._root) as cache:
            fetcher = ImageFetcher(
                Path(cache),
                workers=1,
                timeout=self._timeout,
                retries=1,
                backoff=0.2,
                max_bytes=self._max_bytes,
                guard=self._guard,
                client=self._client,
            )
            with fetcher:
                return fetcher.fetch(url).data

    def close(self) -> None:
        self._client.close()
        shutil.rmtree(self._root, ignore_errors=True)


@dataclass
class AppState:
    """Everything the lifespan builds once; closed in reverse order on shutdown."""

    settings: Settings
    service: CatalensService
    jobs: JobManager
    queries: QueryFetcher
    metrics: ApiMetrics
    scheduler: Scheduler | None = None
    warm_error: str | None = None
    loaded: threading.Event = field(default_factory=threading.Event)
    _warm_thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and self.warm_error is None

    def start_warm_up(self) -> None:
        """Load the models of every collection (or the default model) in the background."""
        self._warm_thread = threading.Thread(
            target=self._warm_up, name="catalens-warm-up", daemon=True
        )
        self._warm_thread.start()

    def _warm_up(self) -> None:
        try:
            specs = {
                self.service.collection(name).config.model_spec
                for name in self.service.collection_names()
            } or {self.settings.model}
            for spec in sorted(specs):
                self.service.embedder(spec)
        except Exception as exc:
            log.exception("loading models failed")
            self.warm_error = f"{type(exc).__name__}: {exc}"
        else:
            try:
                self._bootstrap_rest_collection()
            except Exception:
                log.exception("could not create the collection for rest_url")
        finally:
            self.metrics.bind(self.service)
            self.loaded.set()

    def _bootstrap_rest_collection(self) -> None:
        """Seed 000 migration: with ``rest_url`` (NESTJS_SERVER) and no such collection yet,
        create the default collection (else ``medicines``) from ``<rest_url>/medicines``."""
        if not self.settings.rest_url:
            return
        name = self.settings.default_collection or REST_COLLECTION
        if name in self.service.collection_names():
            return
        location = self.settings.rest_url.rstrip("/") + "/medicines"
        source = SourceConfig(location=location, format="rest")
        self.service.create_collection(name, source=source)
        self.jobs.start_sync(name)
        log.info("created collection %r from %s; its first sync is running", name, location)

    def close(self) -> None:
        self.metrics.bind(None)
        if self.scheduler is not None:
            self.scheduler.stop()
        self.jobs.shutdown(timeout=60)
        if self._warm_thread is not None:
            self._warm_thread.join(timeout=30)
        self.queries.close()
        self.service.close()

    # -- helpers shared by the routes ------------------------------------------------------

    def model_status(self) -> tuple[str, str, bool]:
        """(model name, device, loaded) of the model the compatibility routes use.

        While the models load this touches nothing that waits for them (liveness must not).
        """
        if not self.loaded.is_set():
            return self.settings.model, self.settings.device, False
        spec = self.default_model_spec()
        try:
            embedder = self.service.embedder(spec)
        except Exception:
            return spec, self.settings.device, False
        return embedder.identity.name, embedder.device, True

    def default_model_spec(self) -> str:
        """The default collection's model, else the configured model."""
        try:
            return self.service.collection(default_collection(self)).config.model_spec
        except Exception:
            return self.settings.model

    def model_spec(self, model: str | None) -> str:
        """A model the API may use: a collection's name or model, or the configured one.

        Anything else is refused: a request must not make the server load arbitrary models.
        """
        if model is None:
            return self.settings.model
        known = {self.settings.model}
        for name in self.service.collection_names():
            spec = self.service.collection(name).config.model_spec
            if model == name:
                return spec
            known.add(spec)
        if model not in known:
            raise ApiError(
                422,
                "unknown_model",
                f"model {model!r} is neither a collection nor a model in use here; "
                f"use one of: {', '.join(sorted(known))}",
            )
        return model


def get_state(request: Request) -> AppState:
    state: AppState | None = getattr(request.app.state, "catalens", None)
    if state is None:
        raise ApiError(503, "starting", "the service is still starting")
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def default_collection(state: AppState) -> str:
    """The collection behind the seeds' routes: CATALENS_DEFAULT_COLLECTION, else the only one."""
    names = state.service.collection_names()
    configured = state.settings.default_collection
    if configured:
        if configured not in names:
            raise CollectionNotFoundError(
                f"the default collection {configured!r} (CATALENS_DEFAULT_COLLECTION) "
                "does not exist"
            )
        return configured
    if len(names) == 1:
        return names[0]
    if not names:
        raise CollectionNotFoundError(
            "there is no collection yet: ingest one (catalens ingest) or set "
            "CATALENS_DEFAULT_COLLECTION"
        )
    raise ApiError(
        409,
        "ambiguous_default_collection",
        f"there are {len(names)} collections ({', '.join(names)}): set "
        "CATALENS_DEFAULT_COLLECTION to the one the compatibility routes should use",
    )


def image_link(request: Request, collection: Collection, product_id: str, ref: str) -> str | None:
    """A URL a browser can load for one of a product's image references.

    http(s) references are returned as they are; local files are served by
    ``GET /v1/collections/{name}/images/{image_id}``.
    """
    if _is_url(ref):
        return ref
    for row in collection.ledger.images_of(product_id):
        if row.ref == ref:
            return link_for(request, collection.name, ref, row.image_id)
    return None


def link_for(request: Request, collection: str, ref: str, image_id: int) -> str:
    """``image_link`` when the image id is known."""
    if _is_url(ref):
        return ref
    return str(request.url_for("collection_image", name=collection, image_id=str(image_id)))


def _is_url(ref: str) -> bool:
    return ref.lower().startswith(("http://", "https://"))
