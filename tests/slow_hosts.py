"""A hostile image host for tests: a raw socket server on loopback that drips its headers.

``DripServer`` accepts any number of connections, reads the request, then sends a status
line and header lines one byte at a time, a byte every ``interval`` seconds, and never ends
the headers: every socket read of the client succeeds in time, so only a total deadline
stops it. ``active`` counts the connections being dripped on; ``stop`` closes them all.
"""

from __future__ import annotations

import socket
import threading
import time
from itertools import cycle
from types import TracebackType

_DRIP = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + b"X-Slow: still coming\r\n" * 10_000


class DripServer:
    """A loopback host that never finishes its headers. Use as a context manager."""

    def __init__(self, *, interval: float = 0.05) -> None:
        self.interval = interval
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # accept() wakes up to see stop()
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._active = 0
        self._threads: list[threading.Thread] = []

    @property
    def host(self) -> str:
        """``host:port``, as ``url_allowlist`` takes it."""
        return f"127.0.0.1:{self.port}"

    def url(self, path: str = "/photo.jpg") -> str:
        return f"http://{self.host}{path}"

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    def wait_active(self, count: int, *, limit: float = 30.0) -> bool:
        """Whether ``count`` connections are being dripped on within ``limit`` seconds."""
        until = time.monotonic() + limit
        while self.active < count:
            if time.monotonic() > until:
                return False
            time.sleep(0.02)
        return True

    def __enter__(self) -> DripServer:
        accept = threading.Thread(target=self._accept, name="drip-accept", daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                connection.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            connection.settimeout(5)
            with self._lock:
                self._connections.append(connection)
            worker = threading.Thread(target=self._drip, args=(connection,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _drip(self, connection: socket.socket) -> None:
        with self._lock:
            self._active += 1
        try:
            connection.recv(65536)  # the request; its content does not matter
            for byte in cycle(_DRIP):
                if self._stop.wait(self.interval):
                    return
                connection.sendall(bytes([byte]))
        except OSError:
            return  # the client gave up (what a deadline does), or stop() closed it
        finally:
            with self._lock:
                self._active -= 1
            connection.close()
