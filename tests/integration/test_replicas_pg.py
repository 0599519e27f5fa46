"""What replicas on one PostgreSQL share besides the collections: the advisory locks
(writers, the scheduler) and the job records, on a real server (pgserver)."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

from catalens.api.jobs import JobManager, Scheduler
from catalens.collection.config import SourceConfig
from catalens.ingest.pipeline import IngestReport, Progress
from catalens.ledger.jobs_pg import PgJobs
from catalens.ledger.locks import AdvisoryLock, lock_key
from catalens.service.service import CatalensService


class FakeService:
    """``collection`` and ``sync`` as the job manager uses them; a sync waits on ``gate``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)
        self.calls: Counter[str] = Counter()

    def collection(self, name: str) -> Any:
        return SimpleNamespace(config=SimpleNamespace(source=SourceConfig("catalog.csv")))

    def collection_names(self) -> list[str]:
        return ["shop"]

    def sync(self, name: str, *, progress: Progress | None = None) -> IngestReport:
        self.calls[name] += 1
        self.entered.release()
        assert self.gate.wait(10)
        return IngestReport(collection=name, products_seen=1)


def test_an_advisory_lock_excludes_other_sessions_until_released(pg_dsn: str) -> None:
    key = lock_key("test", uuid.uuid4().hex)
    first, second = AdvisoryLock(pg_dsn, key), AdvisoryLock(pg_dsn, key)
    assert first.acquire(blocking=False)
    assert first.acquire(blocking=False)  # re-entrant in its thread
    assert not second.acquire(blocking=False)
    first.release()
    assert not second.acquire(blocking=False)  # still held once
    first.release()
    assert second.acquire(blocking=False)
    second.release()


def test_jobs_are_shared_through_the_database(pg_dsn: str) -> None:
    one, two = FakeService(), FakeService()
    first = JobManager(cast(CatalensService, one), records=PgJobs(pg_dsn))
    second = JobManager(cast(CatalensService, two), records=PgJobs(pg_dsn))
    one.gate.clear()
    job = first.start_sync("shop")
    assert one.entered.acquire(timeout=5)
    seen = second.get(job.id)
    assert seen is not None and seen.state == "running"
    assert second.start_sync("shop").id == job.id and two.calls["shop"] == 0
    one.gate.set()
    assert seen.wait(10) and seen.state == "succeeded"
    for manager in (first, second):
        manager.shutdown(5)
        manager.records.close()


def test_a_job_of_a_dead_replica_reads_as_failed(pg_dsn: str) -> None:
    records = PgJobs(pg_dsn)
    job_id = uuid.uuid4().hex
    records.save(
        {
            "id": job_id,
            "collection": f"dead-{job_id}",
            "kind": "sync",
            "state": "running",
            "created_at": time.time(),
        }
    )
    manager = JobManager(
        cast(CatalensService, FakeService()),
        records=records,
        heartbeat_seconds=0.05,
        stale_seconds=0.5,
    )
    job = manager.get(job_id)
    assert job is not None and job.wait(10) and job.state == "failed"
    manager.shutdown()
    records.close()


def test_one_scheduler_among_replicas(pg_dsn: str) -> None:
    key = lock_key("scheduler", uuid.uuid4().hex)
    managers = [
        JobManager(cast(CatalensService, FakeService()), records=PgJobs(pg_dsn)) for _ in range(2)
    ]
    first = Scheduler(managers[0], 3600, lock=AdvisoryLock(pg_dsn, key))
    second = Scheduler(managers[1], 3600, lock=AdvisoryLock(pg_dsn, key))
    assert first.lead() and not second.lead()
    first.stop()
    assert second.lead()
    second.stop()
    for manager in managers:
        manager.shutdown()
        manager.records.close()
