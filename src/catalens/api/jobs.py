"""Background syncs: jobs with progress, one running sync per collection, and a scheduler.

``JobManager.start_sync(name)`` runs ``CatalensService.sync`` in a thread and returns a
``Job`` the HTTP layer can poll; a second request while that collection syncs gets the
running job back (seed 000's webhook may fire on every product save). ``run_sync`` waits for
the job (``POST /refresh-medicines`` answers when the index is rebuilt). ``Scheduler`` starts
a sync of every collection with a configured source every ``interval_seconds`` (seed 000's
``CACHE_REFRESH_SECONDS``).

Jobs are records (``ledger.jobs_records.JobRecords``) shared by every process that serves
the same collections (workers, replicas), so a job started through one is read through any
other, after a restart too, and a collection that syncs in one process is not synced by
another meanwhile. The process running a job writes it every ``heartbeat_seconds``; a job
whose process died reads as failed once ``stale_seconds`` passed without a heartbeat. The
scheduler runs in the one process that holds its ``ProcessLock``.

A sync that fails (a dead backend raises ``CatalogError``, or anything else) marks its job
``failed`` with the reason; the ingest applies nothing, so the collection goes on answering
searches from its previous state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from catalens.errors import CatalensError, NoSourceError
from catalens.ledger.jobs_records import JobRecords
from catalens.ledger.jobs_sqlite import SqliteJobs
from catalens.ledger.locks import ProcessLock

if TYPE_CHECKING:
    from catalens.ingest.pipeline import IngestReport
    from catalens.service.service import CatalensService

__all__ = ["MAX_FAILURES", "Job", "JobManager", "JobState", "Scheduler"]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed"]
MAX_FAILURES = 100
"""Failed images listed on a job (the counts still cover them all)."""
HEARTBEAT_SECONDS = 2.0
STALE_SECONDS = 30.0
POLL_SECONDS = 0.2
"""How often ``wait`` reads the record of a job another process runs."""


@dataclass
class Job:
    """One sync of one collection. Fields are updated by the job's thread; read them through
    ``to_dict`` (a consistent snapshot) or after ``wait``."""

    collection: str
    kind: str = "sync"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = "queued"
    stage: str = "queued"
    done: int = 0
    total: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _finished: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    _reread: Callable[[], Mapping[str, Any] | None] | None = field(
        default=None, repr=False, compare=False
    )
    """Set on a job another process runs: reads its record again."""

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], reread: Callable[[], Mapping[str, Any] | None]
    ) -> Job:
        """A job as its record says (one another process runs, or ran)."""
        job = cls(collection=str(record["collection"]), _reread=reread)
        job._take(record)
        return job

    def _take(self, record: Mapping[str, Any]) -> None:
        names = {f.name for f in fields(self) if not f.name.startswith("_")}
        with self._lock:
            for name, value in record.items():
                if name in names:
                    setattr(self, name, value)
        if self.state in ("succeeded", "failed"):
            self._finished.set()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished; False if ``timeout`` passed first."""
        if self._reread is None:
            return self._finished.wait(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            record = self._reread()
            if record is None:  # forgotten: it finished long ago
                return True
            self._take(record)
            if self.finished:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "id": self.id,
                "collection": self.collection,
                "kind": self.kind,
                "state": self.state,
                "stage": self.stage,
                "done": self.done,
                "total": self.total,
                "counts": dict(self.counts),
                "failures": [dict(f) for f in self.failures],
                "error": self.error,
                "created_at": self.created_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
            }

    # -- updates from the job's thread ---------------------------------------------------

    def _progress(self, stage: str, done: int, total: int | None) -> None:
        with self._lock:
            self.stage, self.done, self.total = stage, done, total

    def _start(self) -> None:
        with self._lock:
            self.state, self.stage, self.started_at = "running", "reading catalog", time.time()

    def _succeed(self, report: IngestReport) -> None:
        source = report.source
        with self._lock:
            self.counts = {
                "products_seen": report.products_seen,
                "products_added": report.products_added,
                "products_updated": report.products_updated,
                "products_removed": report.products_removed,
                "images_seen": report.images_seen,
                "images_embedded": report.images_embedded,
                "images_reused": report.images_reused,
                "images_unchanged": report.images_unchanged,
                "images_removed": report.images_removed,
                "images_failed": report.images_failed,
                "rejected_rows": len(source.rejected) if source else 0,
            }
            self.failures = [
                {"product_id": f.product_id, "ref": f.ref, "reason": f.reason}
                for f in report.failed[:MAX_FAILURES]
            ]
            self.state, self.stage, self.finished_at = "succeeded", "done", time.time()

    def _fail(self, error: str) -> None:
        with self._lock:
            self.state, self.error, self.finished_at = "failed", error, time.time()


class JobManager:
    """Starts and remembers sync jobs. Thread-safe.

    ``on_finish(job)`` is called in the job's thread when it ends (metrics, logs); its
    errors are logged, never raised. The ``keep`` most recent finished jobs stay listed.
    """

    def __init__(
        self,
        service: CatalensService,
        *,
        on_finish: Callable[[Job], None] | None = None,
        keep: int = 200,
        records: JobRecords | None = None,
        heartbeat_seconds: float | None = None,
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        """``records`` keeps the jobs where the other processes read them (default: in
        this process's memory alone). ``heartbeat_seconds`` defaults to
        ``HEARTBEAT_SECONDS``, or a quarter of ``stale_seconds`` when that is shorter, so a
        late beat or two never makes a living job read as failed."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        if heartbeat_seconds is None:
            heartbeat_seconds = min(HEARTBEAT_SECONDS, stale_seconds / 4)
        if not 0 < heartbeat_seconds < stale_seconds:
            raise ValueError("heartbeat_seconds must be positive and below stale_seconds")
        self.service = service
        self.records: JobRecords = records if records is not None else SqliteJobs(None)
        self._on_finish = on_finish
        self._keep = keep
        self._stale = stale_seconds
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # insertion order = start order
        self._active: dict[str, Job] = {}  # collection -> its queued or running sync
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False
        self._stopped = threading.Event()
        self._heart = threading.Thread(
            target=self._beat, args=(heartbeat_seconds,), name="catalens-jobs", daemon=True
        )
        self._heart.start()

    def start_sync(self, collection: str, *, force_removals: bool = False) -> Job:
        """A job syncing ``collection`` in the background (the running one if it syncs now,
        as it was started). ``force_removals``: the sync may remove more than
        ``max_removed_share`` of the products.

        Raises ``CollectionNotFoundError`` for an unknown collection and ``NoSourceError``
        for one without a source, before any thread.
        """
        if self.service.collection(collection).config.source is None:
            raise NoSourceError(f"collection {collection!r} has no source configured")
        with self._lock:
            if self._closed:
                raise CatalensError("the job manager has shut down; no new syncs")
            running = self._active.get(collection)
            if running is not None:
                return running
            job = Job(collection=collection)
            claimed = self.records.claim(job.to_dict(), stale_before=time.time() - self._stale)
            if claimed["id"] != job.id:  # another process syncs this collection now
                return self._remote(claimed)
            self._jobs[job.id] = job
            self._active[collection] = job
            thread = threading.Thread(
                target=self._run,
                args=(job, force_removals),
                name=f"catalens-sync-{collection}",
                daemon=True,
            )
            self._threads[job.id] = thread
            self._prune()
        thread.start()
        return job

    def run_sync(self, collection: str, *, force_removals: bool = False) -> Job:
        """Like ``start_sync``, then wait until the job has finished."""
        job = self.start_sync(collection, force_removals=force_removals)
        job.wait()
        return job

    def get(self, job_id: str) -> Job | None:
        """The job, whichever process started it (``None`` when unknown or forgotten)."""
        with self._lock:
            local = self._jobs.get(job_id)
        if local is not None:
            return local
        self.records.fail_stale(time.time() - self._stale)
        record = self.records.get(job_id)
        return None if record is None else self._remote(record)

    def list(self) -> list[Job]:
        """Every remembered job, whichever process started it, newest first."""
        self.records.fail_stale(time.time() - self._stale)
        records = self.records.recent(self._keep + len(self._active))
        with self._lock:
            local = dict(self._jobs)
        jobs = [local.pop(r["id"]) if r["id"] in local else self._remote(r) for r in records]
        jobs.extend(local.values())  # not in the records (a write failed): still listed
        return sorted(jobs, key=lambda job: job.created_at, reverse=True)

    def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new syncs and wait (up to ``timeout`` in all) for the running ones."""
        with self._lock:
            self._closed = True
            threads = list(self._threads.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        self._stopped.set()

    def _remote(self, record: Mapping[str, Any]) -> Job:
        job_id = str(record["id"])

        def reread() -> Mapping[str, Any] | None:
            self.records.fail_stale(time.time() - self._stale)
            return self.records.get(job_id)

        return Job.from_record(record, reread)

    def _beat(self, interval: float) -> None:
        """Write every running job of this process (its progress, and that it is alive)."""
        while not self._stopped.wait(interval):
            with self._lock:
                running = list(self._active.values())
            for job in running:
                self._save(job)

    def _save(self, job: Job) -> None:
        try:
            self.records.save(job.to_dict())
        except Exception:  # the job goes on; its record catches up at the next beat
            log.exception("could not record job %s", job.id)

    def _run(self, job: Job, force_removals: bool = False) -> None:
        job._start()
        self._save(job)
        try:
            report = self.service.sync(
                job.collection, progress=job._progress, force_removals=force_removals
            )
        except CatalensError as exc:
            log.warning("sync of %s failed: %s", job.collection, exc)
            job._fail(str(exc))
        except Exception as exc:
            log.exception("sync of %s failed", job.collection)
            job._fail(f"{type(exc).__name__}: {exc}")
        else:
            job._succeed(report)
        finally:
            if job.finished_at is None:  # a BaseException got through
                job._fail("interrupted")
            self._save(job)  # before it leaves the active ones: no beat writes it afterwards
            with self._lock:
                if self._active.get(job.collection) is job:
                    del self._active[job.collection]
                self._threads.pop(job.id, None)
            self._notify(job)
            job._finished.set()  # last: whoever waits sees the job complete, callback run

    def _notify(self, job: Job) -> None:
        if self._on_finish is None:
            return
        try:
            self._on_finish(job)
        except Exception:
            log.exception("on_finish callback failed for job %s", job.id)

    def _prune(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.finished]
        for job_id in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[job_id]
        try:
            self.records.prune(self._keep)
        except Exception:
            log.exception("could not forget old jobs")


class Scheduler:
    """Every ``interval_seconds``, starts a sync of each collection that has a source.

    With a ``lock`` shared by the processes that serve the same collections, only the
    process holding it ticks: each tries to take it at every interval, keeps it once it has
    it, and lets go on ``stop``, so another takes over when the holder stops or dies."""

    def __init__(
        self, manager: JobManager, interval_seconds: float, *, lock: ProcessLock | None = None
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._manager = manager
        self._interval = interval_seconds
        self._lock = lock
        self._leading = lock is None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        """Whether this process runs the scheduled syncs (it holds the lock)."""
        return self._leading

    def lead(self) -> bool:
        """Take the lock if no other process holds it; whether this process leads now."""
        if not self._leading and self._lock is not None:
            try:
                self._leading = self._lock.acquire(blocking=False)
            except Exception:
                log.exception("the scheduler lock cannot be taken")
        return self._leading

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="catalens-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking (at once: a sync already started goes on in its own thread)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._lock is not None and self._leading:
            self._leading = False
            self._lock.release()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            if self.lead():
                self.tick()

    def tick(self) -> list[Job]:
        """Start the syncs due now; what the loop runs every interval."""
        started = []
        service = self._manager.service
        for name in service.collection_names():
            try:
                if service.collection(name).config.source is None:
                    continue
                started.append(self._manager.start_sync(name))
            except CatalensError as exc:
                log.warning("scheduled sync of %s not started: %s", name, exc)
            except Exception:
                log.exception("scheduled sync of %s not started", name)
        return started
