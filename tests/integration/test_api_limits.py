"""A real server under load that costs it memory or threads (issue 13.2 and 13.3).

- Slow URLs: many searches by URL of a host that drips its headers (``slow_hosts``) take
  at most ``url_fetch_concurrency`` threads; the rest are refused as ``busy`` at once, and
  an upload search still gets its answer while they are in flight.
- Memory: a burst of concurrent 7000x7000 PNG uploads (143 KB each, 49 MP) against a
  ``catalens serve`` process answers only 200, 413 or 503, ``/health`` answers throughout,
  and the process's peak RSS (``VmHWM``) stays within ``RSS_BOUND`` of its RSS at rest (the
  bound docs/api.md states: the model and collections at rest, plus 1 GiB).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import SampleCatalog
from catalens.service.service import build_service
from catalens.settings import Settings
from slow_hosts import DripServer

RSS_BOUND = 1024 * 1024 * 1024
"""How far a burst may take the server's peak RSS above its RSS at rest (docs/api.md)."""
BURST = int(os.environ.get("CATALENS_TEST_BURST", "16"))


def test_slow_url_searches_never_starve_an_upload_search(
    serve_sample: Callable[..., AbstractContextManager[Any]], sample: SampleCatalog
) -> None:
    slow = 48  # more than the server's 40 worker threads
    with (
        DripServer() as drip,
        serve_sample(
            "slow-urls", url_allowlist=[drip.host], url_fetch_timeout=10.0, url_fetch_concurrency=4
        ) as server,
    ):
        url = f"{server.url}/v1/collections/demo/search"

        def by_url(index: int) -> httpx.Response:
            with httpx.Client(timeout=120) as client:
                return client.post(url, json={"image_url": drip.url(f"/{index}.jpg")})

        with ThreadPoolExecutor(slow) as pool:
            answers = [pool.submit(by_url, i) for i in range(slow)]
            assert drip.wait_active(4), "the URL searches never reached the slow host"
            photo = sample.products[0].shopper_photos[0].read_bytes()
            with httpx.Client(base_url=server.url, timeout=30) as client:
                upload = client.post(url, files={"image": ("q.jpg", photo, "image/jpeg")})
            in_flight = drip.active
            assert upload.status_code == 200, upload.text
            assert upload.json()["results"][0]["product_id"] == sample.products[0].id
            assert in_flight >= 1, "the upload was answered only once the URL searches ended"
            statuses = [answer.result().status_code for answer in answers]
        busy = [a.result() for a in answers if a.result().status_code == 503]
        assert set(statuses) <= {422, 503}, statuses  # fetch_failed (deadline) or busy
        assert len(busy) >= slow - 4
        assert all(b.json()["error"] == "busy" and b.headers["Retry-After"] for b in busy)


# -- memory -------------------------------------------------------------------------------


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (7000, 7000), (10, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def _memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (the peak) of a process, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _serve_process(settings: Settings, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``catalens serve`` in its own process (its RSS is its own), until the block ends."""
    port = _free_port()
    environment = {
        **os.environ,
        "CATALENS_HOME": str(settings.home),
        "CATALENS_MODEL": settings.model,
        "CATALENS_QUERY_ZOOMS": "[1.0]",
        "CATALENS_CENTERING": "false",
        "CATALENS_AGGREGATION": "max",
        **env,
    }
    command = [sys.executable, "-m", "catalens", "serve", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        until = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > until:
                raise RuntimeError("catalens serve never became ready")
            time.sleep(0.2)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_a_burst_of_huge_png_uploads_keeps_memory_bounded_and_health_answering(
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Settings],
    sample: SampleCatalog,
) -> None:
    settings = make_settings(tmp_path_factory.mktemp("png-burst"))
    service = build_service(settings)
    try:
        service.ingest("demo", SourceConfig(location=str(sample.catalog_csv)))
    finally:
        service.close()
    bomb = _bomb()
    assert len(bomb) < 200_000
    # The query limit raised to the catalog's: only the budget and reduce() bound memory.
    with _serve_process(settings, CATALENS_MAX_QUERY_PIXELS="50000000") as (base, process):
        url = f"{base}/v1/collections/demo/search"
        photo = sample.products[0].shopper_photos[0].read_bytes()
        warm = httpx.post(url, files={"image": ("q.jpg", photo, "image/jpeg")}, timeout=60)
        assert warm.status_code == 200, warm.text
        at_rest = _memory(process.pid)["VmRSS"]

        health: list[int] = []
        stop = threading.Event()

        def watch_health() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        health.append(client.get(f"{base}/health").status_code)
                    except httpx.HTTPError:
                        health.append(0)
                    stop.wait(0.2)

        def upload(_: int) -> int:
            files = {"image": ("bomb.png", bomb, "image/png")}
            return httpx.post(url, files=files, timeout=300).status_code

        watcher = threading.Thread(target=watch_health, daemon=True)
        watcher.start()
        with ThreadPoolExecutor(BURST) as pool:
            statuses = list(pool.map(upload, range(BURST)))
        stop.set()
        watcher.join(60)
        peak = _memory(process.pid)["VmHWM"]
        assert set(statuses) <= {200, 413, 503}, statuses
        assert 200 in statuses  # the budget serves some, it does not refuse everything
        assert health and set(health) == {200}, health
        grown = peak - at_rest
        assert grown <= RSS_BOUND, (
            f"peak RSS grew {grown / 2**20:.0f} MiB over {at_rest / 2**20:.0f}"
        )
        # And the memory goes back once the burst is over (the heap is trimmed).
        after = _memory(process.pid)["VmRSS"]
        assert after - at_rest <= RSS_BOUND // 2, f"{(after - at_rest) / 2**20:.0f} MiB kept"
