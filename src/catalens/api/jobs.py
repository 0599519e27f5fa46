"""Background syncs: jobs with progress, one running sync per collection, and a scheduler.

``JobManager.start_sync(name)`` runs ``CatalensService.sync`` in a thread and returns a
``Job`` the HTTP layer can poll; a second request while that collection syncs gets the
running job back (seed 000's webhook may fire on every product save). ``run_sync`` waits for
the job (``POST /refresh-medicines`` answers when the index is rebuilt). ``Scheduler`` starts
a sync of every collection with a configured source every ``interval_seconds`` (seed 000's
``CACHE_REFRESH_SECONDS``).

A sync that fails (a dead backend raises ``CatalogError``, or anything else) marks its job
``failed`` with the reason; the ingest applies nothing, so the collection goes on answering
searches from its previous state.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from catalens.errors import CatalensError

if TYPE_CHECKING:
    from catalens.ingest.pipeline import IngestReport
    from catalens.service.service import CatalensService

__all__ = ["MAX_FAILURES", "Job", "JobManager", "JobState", "Scheduler"]

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "succeeded", "failed"]
MAX_FAILURES = 100
"""Failed images listed on a job (the counts still cover them all)."""


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

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished; False if ``timeout`` passed first."""
        return self._finished.wait(timeout)

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
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.service = service
        self._on_finish = on_finish
        self._keep = keep
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}  # insertion order = start order
        self._active: dict[str, Job] = {}  # collection -> its queued or running sync
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False

    def start_sync(self, collection: str) -> Job:
        """A job syncing ``collection`` in the background (the running one if it syncs now).

        Raises ``CollectionNotFoundError`` for an unknown collection, before any thread.
        """
        self.service.collection(collection)
        with self._lock:
            if self._closed:
                raise CatalensError("the job manager has shut down; no new syncs")
            running = self._active.get(collection)
            if running is not None:
                return running
            job = Job(collection=collection)
            self._jobs[job.id] = job
            self._active[collection] = job
            thread = threading.Thread(
                target=self._run, args=(job,), name=f"catalens-sync-{collection}", daemon=True
            )
            self._threads[job.id] = thread
            self._prune()
        thread.start()
        return job

    def run_sync(self, collection: str) -> Job:
        """Like ``start_sync``, then wait until the job has finished."""
        job = self.start_sync(collection)
        job.wait()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        """Every remembered job, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    def shutdown(self, timeout: float | None = None) -> None:
        """Refuse new syncs and wait (up to ``timeout`` in all) for the running ones."""
        with self._lock:
            self._closed = True
            threads = list(self._threads.values())
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)

    def _run(self, job: Job) -> None:
        job._start()
        try:
            report = self.service.sync(job.collection, progress=job._progress)
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


class Scheduler:
    """Every ``interval_seconds``, starts a sync of each collection that has a source."""

    def __init__(self, manager: JobManager, interval_seconds: float) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self._manager = manager
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
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
