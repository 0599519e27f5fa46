"""Fixtures for the HTTP API tests: a real uvicorn server on a free loopback port.

``start_server(settings)`` starts ``create_app(settings)`` under uvicorn in a thread and waits
until ``/ready`` answers 200; ``image_server`` is a second real HTTP server that plays an
image host (its ``/redirect`` answers 302 to wherever ``?to=`` says) and seed 000's NestJS
backend (``GET /medicines``). Test modules share one server each (a module-scoped ``server``
fixture, usually from ``serve_sample``; ``client`` talks to it) to keep the suite fast.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import build_service
from catalens.settings import Settings


@dataclass(frozen=True)
class Server:
    url: str
    port: int
    settings: Settings

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]


@contextmanager
def serve(settings: Settings, *, wait_ready: bool = True) -> Iterator[Server]:
    """Run the app for ``settings`` on 127.0.0.1:<free port> until the block ends."""
    from catalens.api.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ws="none",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    handle = Server(url=f"http://127.0.0.1:{port}", port=port, settings=settings)
    try:
        with handle.client() as client:
            while wait_ready and client.get("/ready").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the app never became ready")
                time.sleep(0.05)
        yield handle
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def api_settings(home: Path, model: Path, **overrides: object) -> Settings:
    """Settings for a test server: the offline model, plain single-view cosine."""
    values: dict[str, object] = {
        "home": home,
        "model": str(model),
        "batch_size": 8,
        "query_zooms": (1.0,),
        "centering": False,
        "aggregation": "max",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def ingest_sample(settings: Settings, catalog: SampleCatalog, name: str = "demo") -> None:
    service = build_service(settings)
    try:
        service.ingest(name, SourceConfig(location=str(catalog.catalog_csv)))
    finally:
        service.close()


@pytest.fixture(scope="session")
def start_server() -> Callable[..., AbstractContextManager[Server]]:
    """``with start_server(settings[, wait_ready=False]) as server:`` runs the app on a free
    loopback port (by default once ``/ready`` says 200)."""
    return serve


@pytest.fixture(scope="session")
def make_settings(mobilenet_dir: Path) -> Callable[..., Settings]:
    """``make_settings(home, **overrides)``: settings with the offline test model."""

    def make(home: Path, **overrides: object) -> Settings:
        return api_settings(home, mobilenet_dir, **overrides)

    return make


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("api-sample"), products=8)


@pytest.fixture(scope="session")
def serve_sample(
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Settings],
    sample: SampleCatalog,
) -> Callable[..., AbstractContextManager[Server]]:
    """``with serve_sample(label, collection="demo", **overrides) as server:`` indexes the
    sample catalog into a fresh home (a temporary folder named after ``label``) and serves it."""

    @contextmanager
    def run(label: str, *, collection: str = "demo", **overrides: object) -> Iterator[Server]:
        settings = make_settings(tmp_path_factory.mktemp(label), **overrides)
        ingest_sample(settings, sample, collection)
        with serve(settings) as running:
            yield running

    return run


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    """A client of the module's ``server`` fixture."""
    with server.client() as c:
        yield c


class _ImageHandler(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            target = parse_qs(parts.query).get("to", [""])[0]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.files.get(parts.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        kind = "application/json" if body[:1] in (b"[", b"{") else "image/jpeg"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass(frozen=True)
class ImageServer:
    port: int
    files: dict[str, bytes]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def image_server(sample: SampleCatalog) -> Iterator[ImageServer]:
    files = {"/photo.jpg": sample.products[0].shopper_photos[0].read_bytes()}
    handler: Callable[..., BaseHTTPRequestHandler] = type(
        "Handler", (_ImageHandler,), {"files": files}
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = int(httpd.server_address[1])
    # Seed 000's NestJS backend: GET /medicines.
    medicine = {
        "id": "med-1",
        "name": "Napa 500mg",
        "nameBn": "নাপা ৫০০",
        "brand": "Beximco",
        "images": [f"http://127.0.0.1:{port}/photo.jpg"],
    }
    files["/medicines"] = json.dumps([medicine]).encode()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(port=port, files=files)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
