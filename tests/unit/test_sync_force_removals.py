"""The API can force a large removal: ``POST /v1/collections/{name}/sync?force_removals=true``
(keyed) passes it through the job manager to ``CatalensService.sync``. Without it, a sync
that would remove more than ``max_removed_share`` of the products fails and changes nothing.
The real app under uvicorn on a loopback port, over a service on the fake embedder."""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from PIL import Image

from catalens.api.app import create_app
from catalens.api.jobs import JobManager
from catalens.api.metrics import ApiMetrics
from catalens.api.state import AppState
from catalens.collection.config import SourceConfig
from catalens.errors import TooManyRemovalsError
from catalens.service.service import CatalensService

KEY = "sync-key-123"


def _catalog(path: Path, images: list[Path], count: int) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "title", "image"])
        for i in range(count):
            writer.writerow([f"sku-{i}", f"Product {i}", str(images[i])])


@pytest.fixture
def served(
    make_fake_service: Callable[..., CatalensService], tmp_path: Path
) -> Iterator[tuple[httpx.Client, CatalensService, JobManager, Path, list[Path]]]:
    """The app on 127.0.0.1 over a fake-embedder service whose collection ``shop`` was
    ingested (by the library) from a 4-product CSV."""
    service = make_fake_service(api_keys=(KEY,))
    images = []
    for i in range(4):
        image = tmp_path / f"img{i}.png"
        Image.new("RGB", (32, 32), (60 * i, 90, 200 - 40 * i)).save(image)
        images.append(image)
    path = tmp_path / "products.csv"
    _catalog(path, images, 4)
    service.ingest("shop", SourceConfig(location=str(path)))
    jobs = JobManager(service)
    app = create_app(service.settings)
    # The state the lifespan would build, over this service (so no lifespan runs).
    app.state.catalens = AppState(service.settings, service, jobs, ApiMetrics())
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-sync-test", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        yield client, service, jobs, path, images
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)
        jobs.shutdown(timeout=30)


def _sync(client: httpx.Client, jobs: JobManager, **params: Any) -> dict[str, Any]:
    """Start a sync over HTTP, wait for its job, and read the job back over HTTP."""
    started = client.post("/v1/collections/shop/sync", params=params, headers={"X-API-Key": KEY})
    assert started.status_code == 202, started.text
    job = jobs.get(started.json()["id"])
    assert job is not None and job.wait(timeout=60)
    answer = client.get(started.headers["Location"], headers={"X-API-Key": KEY})
    assert answer.status_code == 200, answer.text
    read: dict[str, Any] = answer.json()
    return read


def test_a_large_removal_fails_unless_the_sync_route_forces_it(
    served: tuple[httpx.Client, CatalensService, JobManager, Path, list[Path]],
) -> None:
    client, service, jobs, path, images = served
    _catalog(path, images, 1)  # the catalog shrank: 3 of 4 products would go
    with pytest.raises(TooManyRemovalsError):
        service.sync("shop")  # the library's default, as the route's
    # The route is keyed.
    refused = client.post("/v1/collections/shop/sync", params={"force_removals": "true"})
    assert refused.status_code == 401
    failed = _sync(client, jobs)
    assert failed["state"] == "failed"
    assert "max_removed_share" in failed["error"]
    assert len(service.collection("shop").ledger.product_ids()) == 4  # nothing removed
    explicit = _sync(client, jobs, force_removals="false")
    assert explicit["state"] == "failed"
    forced = _sync(client, jobs, force_removals="true")
    assert forced["state"] == "succeeded", forced
    assert forced["counts"]["products_removed"] == 3
    assert service.collection("shop").ledger.product_ids() == {"sku-0"}


def test_the_library_sync_takes_force_removals(
    served: tuple[httpx.Client, CatalensService, JobManager, Path, list[Path]],
) -> None:
    _, service, _, path, images = served
    _catalog(path, images, 1)
    report = service.sync("shop", force_removals=True)
    assert report.products_removed == 3
    assert service.collection("shop").ledger.product_ids() == {"sku-0"}
