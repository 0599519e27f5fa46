"""Jobs shared by processes: records in one sqlite file, read through another manager (as
another worker would), stale jobs of a dead process marked failed, and one scheduler."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from test_jobs import FakeService

from catalens.api.jobs import JobManager, Scheduler
from catalens.ledger.jobs_sqlite import SqliteJobs
from catalens.ledger.locks import FileLock
from catalens.service.service import CatalensService


def _manager(service: FakeService, path: Path, **kwargs: float) -> JobManager:
    return JobManager(cast(CatalensService, service), records=SqliteJobs(path), **kwargs)


def test_a_job_started_through_one_process_is_read_through_another(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    one, two = FakeService(), FakeService()
    first, second = _manager(one, path), _manager(two, path)
    one.gate.clear()
    job = first.start_sync("shop")
    assert one.entered.acquire(timeout=5)
    seen = second.get(job.id)
    assert seen is not None and seen.state == "running" and seen.collection == "shop"
    # The collection syncs in the first process: the second hands back that job.
    again = second.start_sync("shop")
    assert again.id == job.id and two.calls["shop"] == 0
    one.gate.set()
    assert again.wait(10) and again.state == "succeeded"
    assert again.counts["products_added"] == 2
    assert [j.id for j in second.list()] == [job.id]
    first.shutdown(5)
    second.shutdown(5)
    # After a restart (a new manager on the same file) the job is still there.
    restarted = _manager(FakeService(), path)
    found = restarted.get(job.id)
    assert found is not None and found.state == "succeeded"
    restarted.shutdown()


def test_a_job_whose_process_died_reads_as_failed(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    records = SqliteJobs(path)
    dead = {
        "id": "a" * 32,
        "collection": "shop",
        "kind": "sync",
        "state": "running",
        "stage": "embed",
        "done": 3,
        "total": 9,
        "counts": {},
        "failures": [],
        "error": None,
        "created_at": time.time() - 120,
        "started_at": time.time() - 120,
        "finished_at": None,
    }
    records.save(dead)  # its heartbeat is now; then the process stops beating
    service = FakeService()
    manager = _manager(service, path, heartbeat_seconds=0.05, stale_seconds=0.5)
    job = manager.get(dead["id"])
    assert job is not None and job.state == "running"
    assert job.wait(10)  # polls the record until it is marked failed
    failed = manager.get(dead["id"])
    assert failed is not None and failed.state == "failed"
    assert failed.error is not None and "stopped" in failed.error
    # The collection is free again: a new sync starts here.
    fresh = manager.start_sync("shop")
    assert fresh.id != dead["id"] and fresh.wait(10) and fresh.state == "succeeded"
    manager.shutdown(5)
    records.close()


def test_a_running_job_keeps_beating_and_is_never_marked_failed(tmp_path: Path) -> None:
    service = FakeService()
    manager = _manager(service, tmp_path / "jobs.sqlite", heartbeat_seconds=0.05, stale_seconds=0.5)
    reader = _manager(
        FakeService(), tmp_path / "jobs.sqlite", heartbeat_seconds=0.05, stale_seconds=0.5
    )
    service.gate.clear()
    job = manager.start_sync("shop")
    assert service.entered.acquire(timeout=5)
    deadline = time.monotonic() + 1.5  # three times the stale limit
    while time.monotonic() < deadline:
        seen = reader.get(job.id)
        assert seen is not None and seen.state == "running"
        time.sleep(0.05)
    service.gate.set()
    assert job.wait(5) and job.state == "succeeded"
    manager.shutdown(5)
    reader.shutdown(5)


def test_only_one_scheduler_runs_and_another_takes_over(tmp_path: Path) -> None:
    path = tmp_path / "scheduler.lock"
    one, two = FakeService(), FakeService()
    first_jobs, second_jobs = (
        _manager(one, tmp_path / "jobs.sqlite"),
        _manager(two, tmp_path / "jobs.sqlite"),
    )
    first = Scheduler(first_jobs, 3600, lock=FileLock(path))
    second = Scheduler(second_jobs, 3600, lock=FileLock(path))
    assert first.lead() and not second.lead()
    assert first.leading and not second.leading
    first.stop()  # stopping (or dying) lets go
    assert not first.leading and second.lead()
    second.stop()
    first_jobs.shutdown(5)
    second_jobs.shutdown(5)
