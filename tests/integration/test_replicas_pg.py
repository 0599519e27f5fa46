"""What replicas on one PostgreSQL share, on a real server (pgserver): the advisory locks
(writers, the scheduler), the job records, and the revisions through which each replica
takes up the config, calibration and domain mean another one saved."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from catalens.api.jobs import JobManager, Scheduler
from catalens.collection.config import SourceConfig
from catalens.ingest.pipeline import IngestReport, Progress
from catalens.ledger.jobs_pg import PgJobs
from catalens.ledger.locks import AdvisoryLock, lock_key
from catalens.ledger.pg_registry import PgDatabase
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.search.calibration import Calibration, NoCalibration
from catalens.service.service import CatalensService
from catalens.types import Product
from pgdb import fresh_database

pytestmark = pytest.mark.postgres

Make = Callable[..., CatalensService]


@pytest.fixture
def dsn(pg_dsn: str) -> Iterator[str]:
    with fresh_database(pg_dsn) as made:
        yield made


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("pg-replicas"), products=3)


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

    def sync(
        self, name: str, *, progress: Progress | None = None, force_removals: bool = False
    ) -> IngestReport:
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


def test_each_part_a_search_depends_on_moves_its_own_revision(dsn: str) -> None:
    database = PgDatabase(dsn)
    try:
        state = database.create("shop")
        state.set_config({"name": "shop", "created_at": 12.5})
        start = state.revisions()
        assert start.created_at == 12.5
        state.set_calibration({"weights": [1.0]})
        assert state.revisions() == replace(start, calibration=start.calibration + 1)
        state.set_calibration(None)
        assert state.revisions().calibration == start.calibration + 2
        state.set_domain_mean({"count": 1, "mean": [0.0]})
        state.set_config({"name": "shop", "created_at": 12.5, "store": "pgvector"})
        state.set_last_sync({"at": 1.0})  # no search depends on it
        state.save_vectors(["h"], np.ones((1, 4), dtype=np.float32))
        state.apply(
            ChangeSet(
                products=[Product("p", "P", ("p.jpg",))],
                images=[ImageChange("p", "p.jpg", 0, "h", "ok")],
            )
        )
        now = state.revisions()
        assert now == replace(
            start,
            generation=start.generation + 1,
            config=start.config + 1,
            calibration=start.calibration + 2,
            domain_mean=start.domain_mean + 1,
        )
        database.delete("shop")
        assert state.revisions().created_at is None  # gone: its schema was dropped
    finally:
        database.close()


def test_a_replica_takes_up_the_calibration_config_and_mean_another_saved(
    dsn: str, make_fake_service: Make, tmp_path: Path, sample: SampleCatalog
) -> None:
    a = make_fake_service(home=tmp_path / "a", store=dsn)
    b = make_fake_service(home=tmp_path / "b", store=dsn)
    a.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    first, second = a.collection("shop"), b.collection("shop")
    assert second.refresh() and isinstance(second.calibration, NoCalibration)
    fitted = Calibration(
        weights=(1.0, 0.0, 0.0, 0.0, -0.5),
        match_probability=0.7,
        ambiguous_probability=0.15,
        positives=3,
        negatives=3,
        queries=3,
        source="catalog",
        confirmed_views=0,
        train_fpr=0.0,
        fitted_at=1.0,
    )
    first.set_calibration(fitted)
    first.update_source(SourceConfig(str(sample.catalog_csv), where={"brand": "x"}))
    for seed in range(5):
        first.centering.observe(np.random.default_rng(seed).standard_normal(64).astype("f4"))
    first.save_query_mean()
    second.centering.observe(np.ones(64, dtype=np.float32))  # its own, not folded in yet
    pending = second.centering.pending
    assert pending == 1
    assert second.refresh()
    assert second.calibration == fitted
    assert second.config == first.config and second.config.source is not None
    assert second.config.source.where == {"brand": "x"}
    assert second.centering.count == first.centering.count + pending
    assert second.centering.pending == pending  # still to be folded in by ``second``
    first.set_calibration(None)
    assert second.refresh() and isinstance(second.calibration, NoCalibration)
    for service in (a, b):  # the advisory lock only: nothing under either home
        assert not list(service.settings.home.rglob("*.lock"))
        assert not (service.settings.home / "collections").exists()
    a.delete_collection("shop")
    assert not second.refresh() and second.gone
