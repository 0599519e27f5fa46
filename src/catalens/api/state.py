"""What the routes share: the app state built by the lifespan, and small request helpers.

``AppState`` holds the one ``CatalensService`` (which fetches search-by-URL images behind the
address guard), the job manager and the scheduler. Routes get it through the ``StateDep``
dependency (tests may override ``get_state``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from catalens.api.errors import ApiError
from catalens.api.jobs import JobManager, Scheduler
from catalens.api.metrics import ApiMetrics
from catalens.errors import CatalensError, CollectionNotFoundError
from catalens.refs import is_url
from catalens.service.service import CatalensService
from catalens.settings import Settings
from catalens.types import Hit

__all__ = [
    "AppState",
    "StateDep",
    "default_collection",
    "get_state",
    "hit_link",
    "link_for",
]

log = logging.getLogger("catalens.api")

REST_COLLECTION = "medicines"
"""The collection created from ``rest_url`` when no default collection is named."""


@dataclass
class AppState:
    """Everything the lifespan builds once; closed in reverse order on shutdown."""

    settings: Settings
    service: CatalensService
    jobs: JobManager
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
        except CatalensError as exc:
            # A model that is not there says what to do in one line: no traceback.
            log.error("loading models failed: %s", exc)
            self.warm_error = str(exc)
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
        # The backend is the operator's (a setting), so the service reads it as its own.
        created = self.service.create_backend_collection(name, "medicines")
        location = created.config.source.location if created.config.source else None
        self.jobs.start_sync(name)
        log.info("created collection %r from %s; its first sync is running", name, location)

    def close(self) -> None:
        self.metrics.bind(None)
        if self.scheduler is not None:
            self.scheduler.stop()
        self.jobs.shutdown(timeout=60)
        self.jobs.records.close()
        if self._warm_thread is not None:
            self._warm_thread.join(timeout=30)
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


def hit_link(request: Request, hit: Hit) -> str | None:
    """A URL a browser can load for a search result's image, from the hit alone (no trip to
    the collection's state per result): http(s) references as they are, local files through
    ``GET /v1/collections/{name}/images/{image_id}``; ``None`` when the hit has no image."""
    if is_url(hit.image):
        return hit.image
    if hit.image_id is None:
        return None
    return link_for(request, hit.collection, hit.image, hit.image_id)


def link_for(request: Request, collection: str, ref: str, image_id: int) -> str:
    """A URL a browser can load for image ``image_id`` (with reference ``ref``) of a
    collection."""
    if is_url(ref):
        return ref
    return str(request.url_for("collection_image", name=collection, image_id=str(image_id)))
