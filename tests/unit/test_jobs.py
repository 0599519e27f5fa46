"""JobManager and Scheduler against a fake service whose syncs we can hold open."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from catalens.api.jobs import MAX_FAILURES, Job, JobManager, Scheduler
from catalens.collection.config import SourceConfig
from catalens.errors import CatalensError, CatalogError, CollectionNotFoundError
from catalens.ingest.pipeline import IngestFailure, IngestReport, Progress
from catalens.service.service import CatalensService
from catalens.types import RejectedRow, ValidationReport


class FakeService:
    """``collection``/``collection_names``/``sync`` as the job manager uses them."""

    def __init__(self) -> None:
        self.sources: dict[str, SourceConfig | None] = {
            "shop": SourceConfig("http://127.0.0.1:1/medicines", format="rest"),
            "other": SourceConfig("catalog.csv"),
            "manual": None,
        }
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.calls: Counter[str] = Counter()
        self.error: BaseException | None = None
        self.failed_images = 2

    def collection(self, name: str) -> Any:
        if name not in self.sources:
            raise CollectionNotFoundError(f"no collection named {name!r}")
        return SimpleNamespace(config=SimpleNamespace(source=self.sources[name]))

    def collection_names(self) -> list[str]:
        return sorted(self.sources)

    def sync(
        self, name: str, *, progress: Progress | None = None, force_removals: bool = False
    ) -> IngestReport:
        self.calls[name] += 1
        assert progress is not None
        progress("embed", 1, 4)
        self.entered.release()
        assert self.gate.wait(10)
        if self.error is not None:
            raise self.error
        progress("embed", 4, 4)
        source = ValidationReport("x", rejected=[RejectedRow(3, "no images")])
        failed = [IngestFailure(f"p{i}", f"http://x/{i}.png", "HTTP 404") for i in range(2)]
        return IngestReport(
            collection=name,
            source=source,
            products_seen=5,
            products_added=2,
            products_removed=1,
            images_embedded=3,
            images_unchanged=4,
            failed=failed * (self.failed_images // 2),
        )


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def manager(service: FakeService) -> Iterator[JobManager]:
    jobs = JobManager(cast(CatalensService, service))
    yield jobs
    service.gate.set()
    jobs.shutdown(timeout=10)


def test_a_sync_job_reports_progress_counts_and_failures(
    service: FakeService, manager: JobManager
) -> None:
    service.gate.clear()
    job = manager.start_sync("shop")
    assert service.entered.acquire(timeout=5)
    running = job.to_dict()
    assert running["state"] == "running" and running["kind"] == "sync"
    assert (running["stage"], running["done"], running["total"]) == ("embed", 1, 4)
    assert running["started_at"] is not None and running["finished_at"] is None
    service.gate.set()
    assert job.wait(5)
    done = job.to_dict()
    assert done["state"] == "succeeded" and done["error"] is None
    assert done["counts"] == {
        "products_seen": 5,
        "products_added": 2,
        "products_updated": 0,
        "products_removed": 1,
        "images_seen": 0,
        "images_embedded": 3,
        "images_reused": 0,
        "images_unchanged": 4,
        "images_removed": 0,
        "images_failed": 2,
        "rejected_rows": 1,
    }
    assert done["failures"][0] == {
        "product_id": "p0",
        "ref": "http://x/0.png",
        "reason": "HTTP 404",
    }
    assert done["finished_at"] >= done["started_at"]
    assert len(job.id) == 32 and manager.get(job.id) is job
    json.dumps(done)  # the HTTP layer returns it as it is


def test_a_second_request_gets_the_running_job(service: FakeService, manager: JobManager) -> None:
    service.gate.clear()
    first = manager.start_sync("shop")
    assert service.entered.acquire(timeout=5)
    assert manager.start_sync("shop") is first
    other = manager.start_sync("other")  # another collection syncs alongside
    assert other is not first
    service.gate.set()
    assert first.wait(5) and other.wait(5)
    assert service.calls == Counter({"shop": 1, "other": 1})
    again = manager.run_sync("shop")  # after it finished: a new job, waited for
    assert again is not first and again.state == "succeeded"
    assert manager.list() == [again, other, first]


def test_unknown_collection_raises_before_any_job(manager: JobManager) -> None:
    with pytest.raises(CollectionNotFoundError):
        manager.start_sync("nope")
    with pytest.raises(CollectionNotFoundError):
        manager.run_sync("nope")
    assert manager.list() == []


def test_failed_syncs_carry_the_reason(
    service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    finished: list[Job] = []

    def on_finish(job: Job) -> None:
        finished.append(job)
        raise RuntimeError("metrics are down")  # logged, never raised

    manager = JobManager(cast(CatalensService, service), on_finish=on_finish)
    service.error = CatalogError("REST catalog http://127.0.0.1:1/medicines: HTTP 500 (3 attempts)")
    with caplog.at_level(logging.WARNING, logger="catalens.api.jobs"):
        job = manager.run_sync("shop")
    assert job.state == "failed"
    assert job.error == "REST catalog http://127.0.0.1:1/medicines: HTTP 500 (3 attempts)"
    assert job.counts == {} and job.finished_at is not None
    service.error = KeyError("boom")
    crashed = manager.run_sync("shop")
    assert crashed.state == "failed" and crashed.error == "KeyError: 'boom'"
    assert finished == [job, crashed]
    assert "on_finish callback failed" in caplog.text
    manager.shutdown()
    with pytest.raises(CatalensError, match="shut down"):
        manager.start_sync("shop")


def test_failures_are_capped_and_old_jobs_forgotten(service: FakeService) -> None:
    service.failed_images = 2 * (MAX_FAILURES + 10)
    manager = JobManager(cast(CatalensService, service), keep=2)
    jobs = [manager.run_sync("shop") for _ in range(4)]
    assert len(jobs[0].failures) == MAX_FAILURES
    assert jobs[0].counts["images_failed"] == 2 * (MAX_FAILURES + 10)
    manager.start_sync("other").wait(5)
    listed = manager.list()
    assert len(listed) <= 3 and listed[0].collection == "other"
    assert manager.get(jobs[0].id) is None
    manager.shutdown()


def test_shutdown_waits_for_running_syncs(service: FakeService) -> None:
    manager = JobManager(cast(CatalensService, service))
    service.gate.clear()
    job = manager.start_sync("shop")
    assert service.entered.acquire(timeout=5)
    threading.Timer(0.2, service.gate.set).start()
    manager.shutdown(timeout=5)
    assert job.state == "succeeded"


def test_scheduler_syncs_collections_with_a_source(service: FakeService) -> None:
    manager = JobManager(cast(CatalensService, service))
    scheduler = Scheduler(manager, interval_seconds=0.05)
    scheduler.start()
    deadline = time.monotonic() + 5
    while service.calls["shop"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    assert service.calls["shop"] >= 2 and service.calls["other"] >= 1
    assert service.calls["manual"] == 0  # no source configured
    manager.shutdown(timeout=5)


def test_scheduler_stops_promptly_and_survives_errors(service: FakeService) -> None:
    manager = JobManager(cast(CatalensService, service))
    slow = Scheduler(manager, interval_seconds=3600)
    slow.start()
    started = time.monotonic()
    slow.stop()
    assert time.monotonic() - started < 0.5
    manager.shutdown()
    # A tick that cannot start jobs (the manager shut down) logs and goes on.
    assert Scheduler(manager, interval_seconds=1).tick() == []
    with pytest.raises(ValueError):
        Scheduler(manager, interval_seconds=0)
