"""``catalens serve`` in processes of their own on loopback, for the replica tests.

``catalens_serve(env, log=...)`` starts one with the environment a test gives (its home,
store, model), waits until ``/ready`` says 200 and stops it at the end; ``Served.kill``
ends it as a machine that dies would (SIGKILL, no shutdown). ``call`` makes one request on
a fresh connection, ``within`` polls a check until a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_WITHIN = 180.0
"""Starting a server loads its model: generous, for a loaded machine."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Served:
    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL the server and every process it started: nothing runs its shutdown."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def catalens_serve(env: Mapping[str, str], *, log: Path, workers: int = 1) -> Iterator[Served]:
    """``catalens serve`` on a free loopback port with ``env`` over this environment."""
    port = free_port()
    command = [sys.executable, "-m", "catalens", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: ``kill`` reaches its workers
        )
    served = Served(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + READY_WITHIN
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{served.url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # uvicorn stops its workers on SIGTERM
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                served.kill()


def call(url: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a fresh connection (with several workers, any may answer)."""
    with httpx.Client(base_url=url, timeout=120) as client:
        return client.request(method, path, **kwargs)  # type: ignore[arg-type]


def within(seconds: float, check: Callable[[], bool], what: str = "") -> None:
    """``check`` comes true before the deadline (a check begun in time counts)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what or 'not seen'}: not within {seconds} s"
        time.sleep(0.05)
