"""Several ``catalens serve`` processes on one home (the local sqlite + FAISS backend): a
change through one is searched through the others within a second, jobs are shared, and
writes through several at once all land.

Real processes on loopback: two single-worker servers on one home (so each request goes to
the process the test names), and ``catalens serve --workers 2`` (requests on fresh
connections, spread over the workers by the kernel).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from serve_processes import call, within
from serve_processes import catalens_serve as serve_process

from catalens.sample.catalog import SampleCatalog
from catalens.settings import Settings

COHERENT_WITHIN = 1.0
"""The functional deadline: a change is searched through every process within this."""


@contextmanager
def catalens_serve(settings: Settings, allowed: Path, *, workers: int, log: Path) -> Iterator[str]:
    """``catalens serve`` in a process of its own on ``settings.home``; its base URL."""
    env = {
        "CATALENS_HOME": str(settings.home),
        "CATALENS_MODEL": settings.model,
        "CATALENS_API_LOCAL_IMAGE_DIRS": json.dumps([str(allowed)]),
        "CATALENS_JOB_STALE_SECONDS": "5",
    }
    with serve_process(env, log=log, workers=workers) as served:
        yield served.url


def _found(url: str, photo: bytes, product_id: str) -> bool:
    response = call(
        url,
        "POST",
        "/v1/collections/demo/search",
        files={"image": ("q.jpg", photo, "image/jpeg")},
        data={"top_k": "20"},
    )
    assert response.status_code == 200, response.text
    return product_id in {r["product_id"] for r in response.json()["results"]}


def _within_deadline(check: Callable[[], bool]) -> None:
    """``check`` comes true before the deadline (a check begun in time counts)."""
    within(COHERENT_WITHIN, check)


def _upsert(url: str, product_id: str, image: Path) -> None:
    body = {"id": product_id, "title": product_id, "images": [str(image)]}
    response = call(url, "PUT", "/v1/collections/demo/products", json=body)
    assert response.status_code == 200, response.text


def _exercise(first: str, second: str, sample: SampleCatalog) -> None:
    """Upserts, deletes, a sync job and concurrent writes, through ``first`` and ``second``."""
    image = sample.products[2].images[0]
    photo = image.read_bytes()
    for url in (first, second):
        assert not _found(url, photo, "extra-1")
    _upsert(first, "extra-1", image)
    for url in (second, first):
        _within_deadline(lambda url=url: _found(url, photo, "extra-1"))
    assert call(second, "DELETE", "/v1/collections/demo/products/extra-1").status_code == 200
    for url in (first, second):
        _within_deadline(lambda url=url: not _found(url, photo, "extra-1"))

    started = call(first, "POST", "/v1/collections/demo/sync")
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    seen = call(second, "GET", f"/v1/jobs/{job_id}")
    assert seen.status_code == 200 and seen.json()["collection"] == "demo"
    deadline = time.monotonic() + 120
    while call(second, "GET", f"/v1/jobs/{job_id}").json()["state"] not in ("succeeded",):
        assert time.monotonic() < deadline, call(second, "GET", f"/v1/jobs/{job_id}").text
        time.sleep(0.2)
    assert job_id in {j["id"] for j in call(second, "GET", "/v1/jobs").json()["jobs"]}

    ids = [f"both-{i}" for i in range(8)]
    errors: list[BaseException] = []

    def write(url: str, product_id: str, index: int) -> None:
        try:
            _upsert(url, product_id, sample.products[index % len(sample.products)].images[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=((first, second)[i % 2], pid, i))
        for i, pid in enumerate(ids)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = len(sample.products) + len(ids)
    for url in (first, second, first, second):
        _within_deadline(
            lambda url=url: call(url, "GET", "/v1/collections/demo").json()["products"] == expected
        )
    for i, pid in enumerate(ids):
        photo = sample.products[i % len(sample.products)].images[0].read_bytes()
        for url in (first, second):
            _within_deadline(lambda url=url, pid=pid, photo=photo: _found(url, photo, pid))


@pytest.fixture
def home(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    sample: SampleCatalog,
) -> Settings:
    from conftest import ingest_sample

    settings = make_settings(tmp_path / "home")
    ingest_sample(settings, sample)
    return settings


def test_two_serve_processes_on_one_home_see_each_others_changes(
    home: Settings, sample: SampleCatalog, tmp_path: Path
) -> None:
    allowed = sample.root / "images"
    with (
        catalens_serve(home, allowed, workers=1, log=tmp_path / "a.log") as first,
        catalens_serve(home, allowed, workers=1, log=tmp_path / "b.log") as second,
    ):
        _exercise(first, second, sample)


def test_serve_with_two_workers_stays_coherent(
    home: Settings, sample: SampleCatalog, tmp_path: Path
) -> None:
    with catalens_serve(home, sample.root / "images", workers=2, log=tmp_path / "serve.log") as url:
        _exercise(url, url, sample)
