"""Prometheus metrics, in a registry of the app's own (two apps in a process never mix).

- ``catalens_http_requests_total{method, route, status}`` and
  ``catalens_http_request_duration_seconds{method, route}``, labelled by the route template
  (``/v1/collections/{name}/search``), never the raw path;
- ``catalens_collection_products|images|vectors|failed_images{collection}``, read from the
  collections at scrape time;
- ``catalens_sync_jobs_total{collection, state}`` and ``catalens_sync_items_total{collection,
  kind}`` (the counts of every finished sync job), fed by the job manager's ``on_finish``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from catalens.api.jobs import Job
    from catalens.service.service import CatalensService

__all__ = ["ApiMetrics", "MetricsMiddleware"]

log = logging.getLogger("catalens.api")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_GAUGES = {
    "products": "Products in the collection.",
    "images": "Searchable images in the collection.",
    "vectors": "Vectors in the collection's index.",
    "failed_images": "Images that could not be used (see GET /v1/collections/{name}).",
}


class _CollectionSizes(Collector):
    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        families = {
            key: GaugeMetricFamily(f"catalens_collection_{key}", text, labels=["collection"])
            for key, text in _GAUGES.items()
        }
        service = self._metrics.service
        if service is not None:
            try:
                for name in service.collection_names():
                    info = service.collection(name).info()
                    for key, family in families.items():
                        family.add_metric([name], float(info[key]))
            except Exception:  # a scrape must never fail because one collection does
                log.exception("could not read collection sizes for /metrics")
        return list(families.values())


class ApiMetrics:
    """The app's metrics and the registry that holds them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.service: CatalensService | None = None
        self.requests = Counter(
            "catalens_http_requests",
            "HTTP requests by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "catalens_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sync_jobs = Counter(
            "catalens_sync_jobs",
            "Finished sync jobs by collection and final state.",
            ["collection", "state"],
            registry=self.registry,
        )
        self.sync_items = Counter(
            "catalens_sync_items",
            "What finished sync jobs counted (images embedded, products removed, ...).",
            ["collection", "kind"],
            registry=self.registry,
        )
        self.registry.register(_CollectionSizes(self))

    def bind(self, service: CatalensService | None) -> None:
        """The service whose collections the size gauges report (None: stop reporting)."""
        self.service = service

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_job(self, job: Job) -> None:
        """``JobManager(on_finish=...)``: count one finished sync job."""
        self.sync_jobs.labels(job.collection, job.state).inc()
        for kind, value in job.counts.items():
            if value > 0:
                self.sync_items.labels(job.collection, kind).inc(value)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(scope["method"], str(template), status, elapsed)
