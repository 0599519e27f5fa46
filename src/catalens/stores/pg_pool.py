"""The pgvector store's connection pool: autocommit connections, checked only after idling.

A search is a few statements on one connection, and on a busy server every round trip
counts: an autocommit connection needs no ``BEGIN`` and ``COMMIT`` around a single read, and
the pool's liveness check (one more round trip per checkout) is run only on a connection
that sat unused for ``IDLE_CHECK_SECONDS``, when the server may have closed it. A connection
that fails anyway is discarded by the pool when it comes back, and the next one is used.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable

from psycopg_pool import ConnectionPool

from catalens.stores.pg_schema import Conn

IDLE_CHECK_SECONDS = 5.0
"""A connection back in the pool for longer than this is checked before it is handed out."""


class IdleCheck:
    """The pool's ``check`` and ``reset`` callbacks: ``reset`` (on every return) puts the
    connection back in autocommit and notes the time; ``check`` (on every checkout) asks
    the server only when that time is ``idle_seconds`` old."""

    def __init__(self, idle_seconds: float = IDLE_CHECK_SECONDS) -> None:
        self._idle_seconds = idle_seconds
        self._returned: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    def reset(self, conn: Conn) -> None:
        conn.autocommit = True  # a writer's connection turned it off
        self._returned[conn] = time.monotonic()

    def check(self, conn: Conn) -> None:
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned >= self._idle_seconds:
            ConnectionPool.check_connection(conn)


def open_pool(
    dsn: str,
    *,
    size: int,
    name: str,
    configure: Callable[[Conn], None],
    connect_timeout: float,
) -> ConnectionPool[Conn]:
    """A pool of autocommit connections (not opened yet), checked as ``IdleCheck`` says."""
    checks = IdleCheck()
    return ConnectionPool(
        dsn,
        min_size=1,
        max_size=size,
        open=False,
        configure=configure,
        check=checks.check,
        reset=checks.reset,
        kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
        name=name,
    )
