"""Live catalog sync end to end: a real shop backend, a real catalens server, the real model.

The backend is a ThreadingHTTPServer playing seed 000's NestJS app: paginated
``GET /medicines?page=N&limit=M`` and the product images (with ETags) on the same loopback
server. catalens runs under uvicorn on another free loopback port. The scenario: create the
collection from the backend URL, then add, change an image (same URL, new bytes), delete,
sync through the webhook and the sync route, search after each step; a sync that runs while
four threads search; and a dead backend whose failed sync leaves searches answering.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image, ImageDraw

from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.settings import Settings

pytestmark = pytest.mark.slow

COLLECTION = "meds"


@dataclass
class Shop:
    """The backend's data; handlers read it under ``lock``."""

    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    image_delay: float = 0.0
    page_delay: float = 0.0
    fail: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    conditional_hits: int = 0
    not_modified: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


class Backend:
    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,))
        self.thread.start()

    def close(self) -> None:
        self.shop.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def put(self, pid: str, name: str, image: bytes) -> None:
        with self.shop.lock:
            self.shop.images[f"/img/{pid}.png"] = image
            self.shop.products[pid] = {
                "id": pid,
                "name": name,
                "nameBn": f"ঔষধ {pid}",
                "brand": "Napa",
                "images": [f"{self.url}/img/{pid}.png"],
            }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        shop = self.shop

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    parts = urlsplit(self.path)
                    if parts.path == "/medicines":
                        self._medicines(parse_qs(parts.query))
                    else:
                        self._image(parts.path)

            def _send(self, status: int, body: bytes, **headers: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _medicines(self, query: dict[str, list[str]]) -> None:
                shop.stop.wait(shop.page_delay)
                if shop.fail:
                    self._send(500, b'{"message": "Internal server error"}')
                    return
                page, limit = int(query["page"][0]), int(query["limit"][0])
                with shop.lock:
                    items = list(shop.products.values())
                body = {
                    "data": items[(page - 1) * limit : page * limit],
                    "total": len(items),
                    "page": page,
                    "limit": limit,
                    "totalPages": -(-len(items) // limit),
                }
                self._send(200, json.dumps(body).encode(), Content_Type="application/json")

            def _image(self, path: str) -> None:
                shop.stop.wait(shop.image_delay)
                with shop.lock:
                    data = shop.images.get(path)
                if data is None:
                    self._send(404, b"")
                    return
                etag = f'"{hashlib.sha256(data).hexdigest()[:20]}"'
                if self.headers.get("If-None-Match"):
                    with shop.lock:
                        shop.conditional_hits += 1
                    if self.headers["If-None-Match"] == etag:
                        with shop.lock:
                            shop.not_modified += 1
                        self._send(304, b"", ETag=etag)
                        return
                self._send(200, data, Content_Type="image/png", ETag=etag)

        return Handler


def poster(colour: tuple[int, int, int]) -> bytes:
    """An image unlike any sample pack: concentric rings."""
    image = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(image)
    for i, radius in enumerate(range(150, 0, -25)):
        draw.ellipse((160 - radius,) * 2 + (160 + radius,) * 2, fill=colour if i % 2 else "black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# --- helpers on the catalens side ------------------------------------------------------------


def search(client: httpx.Client, image: bytes) -> list[dict[str, Any]]:
    response = client.post(
        f"/v1/collections/{COLLECTION}/search",
        files={"image": ("q.png", image, "image/png")},
        data={"top_k": "10"},
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def wait_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} never finished: {job}"
        time.sleep(0.05)


def sync(client: httpx.Client) -> dict[str, Any]:
    response = client.post(f"/v1/collections/{COLLECTION}/sync")
    assert response.status_code == 202, response.text
    return wait_job(client, response.json()["id"])


@pytest.fixture
def sample(tmp_path: Path) -> SampleCatalog:
    return generate_sample_catalog(tmp_path / "sample", products=8, shopper_photos_per_product=0)


@pytest.fixture
def backend(sample: SampleCatalog) -> Iterator[Backend]:
    server = Backend(Shop())
    yield server
    server.close()


def front(sample: SampleCatalog, n: int) -> bytes:
    return sample.products[n - 1].images[0].read_bytes()


def test_live_sync_with_a_shop_backend(
    sample: SampleCatalog,
    backend: Backend,
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., AbstractContextManager[Any]],
) -> None:
    started = time.monotonic()
    titles = {n: sample.products[n - 1].title for n in range(1, 9)}
    for n in range(1, 7):
        backend.put(f"p{n}", f"v1 {titles[n]}", front(sample, n))
    # A source named over HTTP is fetched behind the address guard: allow the loopback shop.
    allow = (backend.url.removeprefix("http://"),)
    settings = make_settings(tmp_path / "home", default_collection=COLLECTION, url_allowlist=allow)
    with start_server(settings) as app, app.client() as client:
        # 1. Create the collection from the backend URL; its first sync starts at once.
        source = {
            "location": f"{backend.url}/medicines",
            "format": "rest",
            "options": {"pagination": "page", "limit": 4, "backoff": 0.05},
        }
        created = client.post("/v1/collections", json={"name": COLLECTION, "source": source})
        assert created.status_code == 201, created.text
        job = wait_job(client, created.json()["job"]["id"])
        assert job["state"] == "succeeded", job
        assert job["counts"]["products_seen"] == 6 and job["counts"]["images_embedded"] == 6
        assert search(client, front(sample, 2))[0]["product_id"] == "p2"

        # 2. A product added in the backend, then seed 000's webhook: found.
        backend.put("p7", f"v1 {titles[7]}", front(sample, 7))
        refreshed = client.post("/refresh-medicines")
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["status"] == "success"
        assert refreshed.json()["medicines_count"] == 7
        assert search(client, front(sample, 7))[0]["product_id"] == "p7"
        legacy = client.post("/search", files={"image": ("q.png", front(sample, 7), "image/png")})
        assert legacy.status_code == 200, legacy.text
        first = legacy.json()[0]
        assert (first["id"], first["nameBn"], first["brand"]) == ("p7", "ঔষধ p7", "Napa")

        # 3. A new image behind the same URL (new bytes, new ETag): re-embedded.
        old_p3, new_p3 = front(sample, 3), poster((230, 40, 40))
        with backend.shop.lock:
            backend.shop.images["/img/p3.png"] = new_p3
            backend.shop.conditional_hits = backend.shop.not_modified = 0
        job = sync(client)
        assert job["state"] == "succeeded", job
        assert job["counts"]["images_embedded"] == 1 and job["counts"]["images_unchanged"] == 6
        assert (backend.shop.conditional_hits, backend.shop.not_modified) == (7, 6)
        assert search(client, new_p3)[0]["product_id"] == "p3"
        old_hits = search(client, old_p3)
        assert old_hits[0]["product_id"] != "p3"
        assert next(h["score"] for h in old_hits if h["product_id"] == "p3") < 0.99

        # 4. A product deleted in the backend: gone.
        with backend.shop.lock:
            del backend.shop.products["p5"]
        job = sync(client)
        assert job["state"] == "succeeded" and job["counts"]["products_removed"] == 1
        assert "p5" not in {h["product_id"] for h in search(client, front(sample, 5))}

        # 5. A slow sync (every product renamed v1 -> v2, p7 out, p8 in) while four threads
        #    search: no errors, and every result list is wholly before or wholly after.
        before = {"p1", "p2", "p3", "p4", "p6", "p7"}
        after = {"p1", "p2", "p3", "p4", "p6", "p8"}
        with backend.shop.lock:
            del backend.shop.products["p7"]
        for n in (1, 2, 3, 4, 6):
            backend.shop.products[f"p{n}"]["name"] = f"v2 {titles[n]}"
        backend.put("p8", f"v2 {titles[8]}", front(sample, 8))
        backend.shop.image_delay, backend.shop.page_delay = 0.3, 0.2
        outcome = concurrent_searches(app, client, front(sample, 8), before, after)
        assert outcome.errors == []
        assert outcome.mixed == []
        assert outcome.job["state"] == "succeeded", outcome.job
        assert outcome.during > 0, "no search ran while the sync was running"
        assert outcome.seen == {"before", "after"}
        backend.shop.image_delay = backend.shop.page_delay = 0.0
        assert search(client, front(sample, 8))[0]["product_id"] == "p8"

        # 6. The backend breaks: the sync job fails, searches answer from the last state.
        backend.shop.fail = True
        job = sync(client)
        assert job["state"] == "failed"
        assert "HTTP 500 (3 attempts)" in job["error"] and backend.url in job["error"]
        hits = search(client, front(sample, 8))
        assert hits[0]["product_id"] == "p8"
        assert {h["product_id"] for h in hits} == after
        assert all(h["title"].startswith("v2 ") for h in hits)
        info = client.get(f"/v1/collections/{COLLECTION}").json()
        assert info["products"] == 6
    assert time.monotonic() - started < 60


@dataclass
class Outcome:
    job: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    mixed: list[list[tuple[str, str]]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    during: int = 0


def concurrent_searches(
    app: Any, client: httpx.Client, query: bytes, before: set[str], after: set[str]
) -> Outcome:
    running = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    outcome = Outcome(job={})

    def searcher() -> None:
        with app.client() as own:
            for _ in range(150):
                if stop.is_set():
                    return
                during = running.is_set()
                try:
                    hits = search(own, query)
                except Exception as exc:  # any failure is what the test looks for
                    with lock:
                        outcome.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                ids = {h["product_id"] for h in hits}
                versions = {h["title"].split(" ", 1)[0] for h in hits}
                with lock:
                    outcome.during += during
                    if ids == before and versions == {"v1"}:
                        outcome.seen.add("before")
                    elif ids == after and versions == {"v2"}:
                        outcome.seen.add("after")
                    else:
                        outcome.mixed.append([(h["product_id"], h["title"]) for h in hits])

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # the loops are going before the sync starts
    response = client.post(f"/v1/collections/{COLLECTION}/sync")
    assert response.status_code == 202, response.text
    running.set()
    outcome.job = wait_job(client, response.json()["id"])
    running.clear()
    time.sleep(0.5)  # and go on a little after it
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return outcome
