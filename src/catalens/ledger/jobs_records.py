"""Job records shared by every process of a deployment: the ``JobRecords`` seam.

A job (a background sync) is kept as its JSON document (``api/jobs.Job.to_dict``) beside the
few columns the queries need. ``jobs_sqlite.SqliteJobs`` keeps them in a sqlite file under
the home (every worker of one machine), ``jobs_pg.PgJobs`` in the PostgreSQL database that
holds the collections (every replica). The process running a job writes its record again
every few seconds (its heartbeat); a queued or running job whose heartbeat is older than a
limit belongs to a process that died, and ``fail_stale`` marks it failed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

__all__ = ["ACTIVE", "JobRecords", "stale_failure"]

ACTIVE = ("queued", "running")
"""The states of a job that has not finished."""


class JobRecords(Protocol):
    """Job documents by id. Thread-safe; every write commits before it returns."""

    def claim(self, job: Mapping[str, Any], *, stale_before: float) -> dict[str, Any]:
        """Atomically: the active job of ``job["collection"]`` if there is one (after failing
        those whose heartbeat is older than ``stale_before``), else ``job``, saved."""
        ...

    def save(self, job: Mapping[str, Any]) -> None:
        """Write the job's document; its heartbeat is now."""
        ...

    def beat(self, job_ids: Sequence[str]) -> None:
        """The heartbeat of these jobs is now."""
        ...

    def get(self, job_id: str) -> dict[str, Any] | None: ...

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs, newest first."""
        ...

    def fail_stale(self, stale_before: float) -> int:
        """Mark failed every active job whose heartbeat is older than ``stale_before``; how
        many."""
        ...

    def prune(self, keep: int) -> None:
        """Forget all but the newest ``keep`` finished jobs."""
        ...

    def close(self) -> None: ...


def stale_failure(job: Mapping[str, Any], heartbeat: float) -> dict[str, Any]:
    """The document of an active job whose process stopped (no heartbeat since
    ``heartbeat``)."""
    now = time.time()
    return {
        **job,
        "state": "failed",
        "error": (
            f"the process running this job stopped (no sign of it for {now - heartbeat:.0f} s);"
            " the collection kept its previous state"
        ),
        "finished_at": now,
    }
