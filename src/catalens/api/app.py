"""The FastAPI app: ``create_app(settings)`` wires the routes over one ``CatalensService``.

The lifespan builds the service once (``build_service``), the sync job manager, the
scheduler (when ``refresh_seconds`` > 0) and the guarded fetcher for search-by-URL, then
loads the models in the background (``GET /ready`` says when). OpenAPI docs are at ``/docs``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from catalens import __version__
from catalens.api import routes_catalog, routes_compat, routes_feedback, routes_v1
from catalens.api.docs import install_docs
from catalens.api.errors import install_error_handlers
from catalens.api.jobs import JobManager, Scheduler
from catalens.api.legacy_env import settings_from_env
from catalens.api.logs import RequestIdMiddleware
from catalens.api.metrics import ApiMetrics, MetricsMiddleware
from catalens.api.operations import summarise
from catalens.api.origins import OriginGuard, exposure_warnings
from catalens.api.state import AppState
from catalens.api.uploads import UploadLimitMiddleware
from catalens.ledger.jobs_records import JobRecords
from catalens.ledger.jobs_sqlite import SqliteJobs
from catalens.ledger.locks import AdvisoryLock, FileLock, ProcessLock, lock_key
from catalens.service.service import build_service
from catalens.service.stores import is_postgres, postgres_dsn
from catalens.settings import Settings

__all__ = ["app_from_env", "create_app"]

log = logging.getLogger("catalens.api")


def _start(settings: Settings, metrics: ApiMetrics) -> AppState:
    for warning in exposure_warnings(settings):
        log.warning(warning)
    service = build_service(settings)
    records, scheduler_lock = _shared_by_processes(settings)
    jobs = JobManager(
        service,
        on_finish=metrics.observe_job,
        records=records,
        stale_seconds=settings.job_stale_seconds,
    )
    state = AppState(
        settings=settings,
        service=service,
        jobs=jobs,
        metrics=metrics,
    )
    if settings.refresh_seconds > 0:
        state.scheduler = Scheduler(jobs, settings.refresh_seconds, lock=scheduler_lock)
        state.scheduler.start()
    state.start_warm_up()
    return state


def _shared_by_processes(settings: Settings) -> tuple[JobRecords, ProcessLock]:
    """The job records and the scheduler's lock of every process that serves these
    collections: in the PostgreSQL database when the store is one (every replica), else
    beside the home's collections (every worker of this machine)."""
    if is_postgres(settings.store):
        from catalens.ledger.jobs_pg import PgJobs

        dsn = postgres_dsn(settings)
        return PgJobs(dsn), AdvisoryLock(dsn, lock_key("scheduler"))
    home = settings.home
    return SqliteJobs(home / "jobs.sqlite"), FileLock(home / "scheduler.lock")


def _web_ui() -> ModuleType | None:
    try:
        return importlib.import_module("catalens.api.web")
    except ImportError:  # the web UI (or jinja2) is not installed: the API alone
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app for ``settings`` (default: the environment, the seeds' variables included)."""
    resolved = settings if settings is not None else settings_from_env()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await run_in_threadpool(_start, resolved, metrics)
        app.state.catalens = state
        try:
            yield
        finally:
            app.state.catalens = None
            await run_in_threadpool(state.close)

    app = FastAPI(
        title="catalens",
        version=__version__,
        summary="Visual product search: find the catalog product in a photo.",
        lifespan=lifespan,
        # Served by install_docs from the package's own assets: /docs works offline.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = resolved
    app.state.catalens = None
    install_error_handlers(app)
    install_docs(app)
    app.include_router(summarise(routes_v1.service_router))
    # The views routes first: a product id may hold '/', so /products/{id:path} would take
    # .../products/{id}/views as the id "{id}/views".
    app.include_router(summarise(routes_feedback.router))
    app.include_router(summarise(routes_v1.router))
    app.include_router(summarise(routes_catalog.router))
    # Before the web UI's router: the compatibility GET / answers JSON or the page itself.
    app.include_router(routes_compat.router)
    web = _web_ui()
    if web is not None:
        app.include_router(web.router)
        web.mount_static(app)
    app.add_middleware(UploadLimitMiddleware, max_upload_bytes=resolved.max_upload_bytes)
    # Only the service's own pages, and the origins the operator lists, may call it from a
    # browser (see origins.py).
    app.add_middleware(OriginGuard, allowed=resolved.cors_origins)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(resolved.cors_origins),
        allow_methods=["*"],
        allow_headers=["*"],
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost: every log line of a request, uvicorn's access line too, carries its id.
    app.add_middleware(RequestIdMiddleware)
    # Build every response schema now, in one thread: pydantic builds dataclass schemas
    # lazily, and two first requests racing on one of them fail (seen once in CI).
    app.openapi()
    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory catalens.api.app:app_from_env`` (several workers)."""
    return create_app(settings_from_env())
