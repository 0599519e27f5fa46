"""A total deadline over HTTP requests: connect, TLS, headers and body together.

httpx's timeouts bound each socket operation, not a request: a host that drips its status
line and headers one byte at a time answers every read in time and holds the caller for as
long as it likes. ``deadline_client`` makes an ``httpx.Client`` whose sockets give each
read, write and connect only the time left before the deadline that ``within(deadline)``
sets for the calling thread (a ``ContextVar``), so a request in that block fails with an
httpx timeout once the deadline has passed, whatever the host does.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

__all__ = ["deadline_client", "seconds_left", "within"]

_DEADLINE: ContextVar[float | None] = ContextVar("catalens_http_deadline", default=None)


@contextmanager
def within(deadline: float) -> Iterator[None]:
    """Requests made by this thread in the block end by ``deadline`` (``time.monotonic``)."""
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def seconds_left() -> float | None:
    """Seconds left before the deadline of ``within`` (``None`` outside one)."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    left = seconds_left()
    if left is None:
        return timeout
    if left <= 0:
        raise expired("the request's total deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, bounded, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport over a connection pool whose sockets keep the deadline."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        # httpx builds its pool without a way to name the network backend; this is the same
        # pool (its defaults: TLS context, HTTP/1.1, these limits) over deadline sockets.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(),
        )


def deadline_client(
    *, timeout: float, headers: Mapping[str, str], max_connections: int = 10
) -> httpx.Client:
    """An ``httpx.Client`` that never follows redirects by itself (the caller checks each
    hop) and whose requests inside ``within(deadline)`` end by that deadline."""
    limits = httpx.Limits(max_connections=max_connections)
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        headers=dict(headers),
        transport=_DeadlineTransport(limits),
    )
