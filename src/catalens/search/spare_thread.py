"""A spare thread that takes half of a query's preprocessing when a core is idle.

A single query's preprocessing (resampling its zoom views) runs on one core while the
model's threads wait for it; on a machine with a free core, half of it can run beside.
The spare thread is only ever offered work, never queued behind: when it is busy (another
query has it) or has not started the offered part by the time the caller is done with its
own, the caller takes the part back and does it itself, so a busy machine loses nothing
but the offer (tens of microseconds).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["SpareThread", "spare_thread"]

T = TypeVar("T")
U = TypeVar("U")


class SpareThread:
    """One worker thread, lent to one caller at a time. Thread-safe and fork-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._free = threading.Semaphore(1)
        self._pid = 0
        self.lent = 0
        """Parts the spare thread ran (for tests: zero means every part ran in its caller)."""

    def beside(self, side: Callable[[], T], own: Callable[[], U]) -> tuple[T, U]:
        """``(side(), own())``: ``own`` runs here while ``side`` runs on the spare thread,
        or here after ``own`` when the spare thread is busy or has not begun it."""
        offered = self._offer(side)
        try:
            mine = own()
        except BaseException:
            if offered is not None:
                self._take_back(*offered)  # begun: it finishes, unread
            raise
        if offered is None or self._take_back(*offered):
            return side(), mine
        return offered[0].result(), mine

    def _offer(self, side: Callable[[], T]) -> tuple[Future[T], threading.Semaphore] | None:
        if (os.cpu_count() or 1) < 2:
            return None
        pool, free = self._pool_here()
        if not free.acquire(blocking=False):
            return None
        try:
            return pool.submit(self._run, side, free), free
        except RuntimeError:  # the interpreter is shutting down
            free.release()
            return None

    @staticmethod
    def _take_back(future: Future[T], free: threading.Semaphore) -> bool:
        """Whether the part was taken back before it began (it then never runs)."""
        if not future.cancel():
            return False
        free.release()
        return True

    def _run(self, side: Callable[[], T], free: threading.Semaphore) -> T:
        self.lent += 1
        try:
            return side()
        finally:
            free.release()  # before the caller can see the result: free when it returns

    def _pool_here(self) -> tuple[ThreadPoolExecutor, threading.Semaphore]:
        """This process's pool: a forked child has the parent's pool object without its
        thread, so it starts its own."""
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="catalens-spare")
                self._free = threading.Semaphore(1)
                self._pid = os.getpid()
            return self._pool, self._free


spare_thread = SpareThread()
"""The process's one spare thread."""
