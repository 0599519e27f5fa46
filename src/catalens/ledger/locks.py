"""Locks that hold across processes: a lock file (one machine) and a PostgreSQL advisory lock
(every replica on one database).

A collection's writers take one (``Collection.writing``) so that two processes never apply,
flush or rebuild its vector store at once, and the API's scheduler takes one so that only
one process runs scheduled syncs. Both kinds are re-entrant within a process: a thread that
holds the lock may take it again, and other threads of the process wait as another process
would.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

__all__ = ["AdvisoryLock", "FileLock", "ProcessLock", "WriterLocking", "held", "lock_key"]


class ProcessLock(Protocol):
    """An exclusive lock shared by every process that uses the same resource."""

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock (waiting for it unless ``blocking`` is false); whether it was taken."""
        ...

    def release(self) -> None: ...


@runtime_checkable
class WriterLocking(Protocol):
    """A collection state that knows how its writers exclude each other across processes
    (a state kept in a server: its processes need not share a folder)."""

    def writer_lock(self) -> ProcessLock: ...


@contextmanager
def held(lock: ProcessLock) -> Iterator[None]:
    """``with held(lock):`` the lock is held inside the block (waiting for it if need be)."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


class _Reentrant:
    """The in-process half of both locks: a re-entrant thread lock and a depth count; the
    process-wide half is taken by the first ``acquire`` and let go by the last ``release``."""

    def __init__(self) -> None:
        self._threads = threading.RLock()
        self._depth = 0

    def acquire(self, blocking: bool = True) -> bool:
        if not self._threads.acquire(blocking):
            return False
        if self._depth == 0:
            try:
                taken = self._take(blocking)
            except BaseException:
                self._threads.release()
                raise
            if not taken:
                self._threads.release()
                return False
        self._depth += 1
        return True

    def release(self) -> None:
        if self._depth <= 0:
            raise RuntimeError("release of a lock that is not held")
        self._depth -= 1
        try:
            if self._depth == 0:
                self._give()
        finally:
            self._threads.release()

    def _take(self, blocking: bool) -> bool:
        raise NotImplementedError

    def _give(self) -> None:
        raise NotImplementedError


class FileLock(_Reentrant):
    """``flock`` on a file: exclusive among the processes of one machine (and the threads of
    each). On Windows, which has no ``flock``, only the threads of one process exclude each
    other. The file itself stays; only the lock on it comes and goes."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._handle: IO[bytes] | None = None

    def _take(self, blocking: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+b")
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                handle.close()
                return False
            except BaseException:
                handle.close()
                raise
        self._handle = handle
        return True

    def _give(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the file lets go of the flock


def lock_key(*parts: str) -> int:
    """A stable signed 64-bit advisory lock key for a name (PostgreSQL's ``bigint``)."""
    digest = hashlib.sha256("\x00".join(("catalens", *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class AdvisoryLock(_Reentrant):
    """A PostgreSQL session advisory lock: exclusive among every process connected to the
    database. It holds its own connection while held, so a process that dies lets go of it
    when the server notices the connection is gone."""

    def __init__(self, dsn: str, key: int) -> None:
        super().__init__()
        self.dsn = dsn
        self.key = key
        self._conn: Any = None

    def _take(self, blocking: bool) -> bool:
        import psycopg

        conn = psycopg.connect(self.dsn, autocommit=True)
        try:
            if blocking:
                conn.execute("SELECT pg_advisory_lock(%s)", (self.key,))
                taken = True
            else:
                row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
                taken = bool(row and row[0])
        except BaseException:
            conn.close()
            raise
        if not taken:
            conn.close()
            return False
        self._conn = conn
        return True

    def _give(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            with suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        finally:
            conn.close()  # a closed session holds no advisory lock either way
