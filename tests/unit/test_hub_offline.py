"""Loading a hub model with no hub: one short probe, a one-line answer, remembered failures."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalens.embedders import ClipRuntime, forget_failed_loads, load_embedder
from catalens.embedders.hub import hub_reachable
from catalens.errors import ModelError

# Not in any cache: a load must go to the hub, which these tests replace with loopback.
SPEC = "catalens-test/no-such-clip"
# Generous: the probe gives up after ~2 s; hub retries take 50-60 s.
QUICK_S = 10.0


class _Stalling:
    """A loopback endpoint that accepts connections and never answers; counts them."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.held.append(conn)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.listener.close()


def _stalling_server() -> Iterator[str]:
    server = _Stalling()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def stalling(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Stalling]:
    server = _Stalling()
    _point_hub_at(monkeypatch, server.url)
    forget_failed_loads()
    yield server
    forget_failed_loads()
    server.close()


def _point_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # huggingface_hub read HF_ENDPOINT when imported: point it at loopback too, so even
    # code that ignores the probe never reaches the internet from a test.
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )


def _closed_port() -> Iterator[str]:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    yield f"http://127.0.0.1:{port}"


@pytest.fixture(params=["stalls", "closed"])
def dead_hub(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    factory = _stalling_server if request.param == "stalls" else _closed_port
    for endpoint in factory():
        _point_hub_at(monkeypatch, endpoint)
        forget_failed_loads()
        yield endpoint
        forget_failed_loads()


def _load(tmp_path: Path) -> None:
    load_embedder(SPEC, device="cpu", clip=ClipRuntime(models_dir=tmp_path / "models"))


def test_a_dead_hub_fails_fast_in_one_line(dead_hub: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ModelError) as failure:
        _load(tmp_path)
    assert time.monotonic() - started < QUICK_S
    message = str(failure.value)
    assert "\n" not in message
    assert dead_hub in message and SPEC in message
    assert "efficientnet-lite0" in message and "CATALENS_MODEL" in message
    assert "model directory" in message


def test_a_failed_load_is_remembered(stalling: _Stalling, tmp_path: Path) -> None:
    with pytest.raises(ModelError) as first:
        _load(tmp_path)
    tried = len(stalling.held)
    assert tried >= 1  # the probe went to the (loopback) hub
    with pytest.raises(ModelError) as again:
        _load(tmp_path)
    assert str(again.value) == str(first.value)
    assert len(stalling.held) == tried  # the second load did not go near the network
    forget_failed_loads()
    with pytest.raises(ModelError):
        _load(tmp_path)
    assert len(stalling.held) > tried  # forgotten: it asks again


def test_hub_offline_needs_no_probe(stalling: _Stalling, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        load_embedder(SPEC, device="cpu")
    assert stalling.held == []


def test_a_typo_of_a_built_in_gets_did_you_mean(stalling: _Stalling) -> None:
    with pytest.raises(ModelError, match="did you mean efficientnet-lite0"):
        load_embedder("efficientnet-lite9", device="cpu")
    assert stalling.held == []
