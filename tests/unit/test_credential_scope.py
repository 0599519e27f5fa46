"""A source's credential goes only where its scope says: the URLs the operator's credential
``urls`` cover, or (a credential without ``urls``, and an ``auth_token_env`` token) the
source's own origin. Next-page links and redirects to another origin never carry it. Two real
loopback backends on different ports (different origins): the second records every header
it gets, and never gets the token."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest
from PIL import Image

from catalens.catalog import RestSource
from catalens.collection.config import SourceConfig
from catalens.service.service import CatalensService
from catalens.settings import SourceCredential

TOKEN = "tok-scope-0123456789"
HEADER = "X-Shop-Token"


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 160, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


class _Shop(BaseHTTPRequestHandler):
    """``/linked``: one item and a ``Link`` to the peer's ``/page2``; ``/cursor``: one item
    and a next-page URL on the peer in the body; ``/away?to=PATH``: 302 to the peer's PATH;
    ``/here``: 302 to this server's ``/page2``; ``/page2``: the last page. Records
    ``(path, headers)`` of every request."""

    seen: ClassVar[list[tuple[str, dict[str, str]]]]
    peer: ClassVar[str]
    image: ClassVar[bytes]

    def do_GET(self) -> None:
        self.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
        own = f"http://{self.headers['Host']}"
        parts = urlsplit(self.path)
        if parts.path in ("/away", "/here"):
            target = parts.query.removeprefix("to=") if parts.path == "/away" else "/page2"
            base = self.peer if parts.path == "/away" else own
            self._send(302, b"", "text/plain", Location=f"{base}{target}")
        elif parts.path in ("/linked", "/cursor", "/page2"):
            item = {"id": f"{parts.path.strip('/')}-{own[-5:]}", "image": f"{own}/m.png"}
            body: dict[str, Any] = {"items": [item]}
            extra = {}
            if parts.path == "/linked":
                extra["Link"] = f'<{self.peer}/page2>; rel="next"'
            if parts.path == "/cursor":
                body["next"] = f"{self.peer}/page2"
            self._send(200, json.dumps(body).encode(), "application/json", **extra)
        else:
            self._send(200, self.image, "image/png")

    def _send(self, status: int, body: bytes, kind: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class _Server:
    url: str
    seen: list[tuple[str, dict[str, str]]]

    def tokens(self) -> list[tuple[str, str | None]]:
        """``(path, the credential header's value)`` of every request this server got."""
        return [(path, headers.get(HEADER.lower())) for path, headers in self.seen]


@pytest.fixture
def shops() -> Iterator[tuple[_Server, _Server]]:
    """The source's backend and another origin (127.0.0.1, another port), each the other's
    peer."""
    servers, handlers = [], []
    for name in ("Source", "Other"):
        handler = type(name, (_Shop,), {"seen": [], "peer": "", "image": _png()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        handlers.append(handler)
    urls = [f"http://127.0.0.1:{server.server_address[1]}" for server in servers]
    handlers[0].peer, handlers[1].peer = urls[1], urls[0]
    try:
        yield _Server(urls[0], handlers[0].seen), _Server(urls[1], handlers[1].seen)
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _service(
    make: Callable[..., CatalensService], shops: tuple[_Server, _Server], **credential: Any
) -> CatalensService:
    hosts = tuple(shop.url.removeprefix("http://") for shop in shops)
    declared = SourceCredential(header=HEADER, value=TOKEN, **credential)
    return make(url_allowlist=hosts, source_credentials={"shop": declared})


def _rest(url: str) -> SourceConfig:
    return SourceConfig(location=url, format="rest", options={"credential": "shop"})


PATHS = ("/linked", "/cursor", "/away?to=/page2")


def test_an_operator_credential_without_urls_stays_on_the_source_origin(
    make_fake_service: Callable[..., CatalensService], shops: tuple[_Server, _Server]
) -> None:
    source, other = shops
    service = _service(make_fake_service, shops)
    for number, path in enumerate(PATHS):
        report = service.ingest(f"c{number}", _rest(f"{source.url}{path}"))
        assert report.products_seen == (1 if path.startswith("/away") else 2), path
    # A redirect within the origin keeps it: each hop is checked, not every hop stripped.
    service.ingest("same", _rest(f"{source.url}/here"))
    pages = [(p, t) for p, t in source.tokens() if not p.endswith(".png")]
    assert pages == [*((p, TOKEN) for p in PATHS), ("/here", TOKEN), ("/page2", TOKEN)]
    assert [p for p, _ in other.tokens() if p == "/page2"] == ["/page2"] * 3  # it was asked
    assert all(token is None for _, token in other.tokens())


def test_an_api_credential_goes_only_to_its_urls(
    make_fake_service: Callable[..., CatalensService], shops: tuple[_Server, _Server]
) -> None:
    source, other = shops
    service = _service(make_fake_service, shops, urls=(f"{source.url}/",))
    for number, path in enumerate(PATHS):
        # Created as over the HTTP API: untrusted, read through the guarded client.
        service.create_collection(f"c{number}", source=_rest(f"{source.url}{path}"))
        assert service.collection(f"c{number}").config.source.untrusted  # type: ignore[union-attr]
        service.sync(f"c{number}")
    assert [t for p, t in source.tokens() if not p.endswith(".png")] == [TOKEN] * 3
    assert len(other.tokens()) >= 3
    assert all(token is None for _, token in other.tokens())


def test_an_auth_token_env_token_stays_on_the_source_origin(
    shops: tuple[_Server, _Server],
) -> None:
    source, other = shops
    options = {"auth_token_env": "SHOP_TOKEN", "auth_header": HEADER}
    for path in PATHS:
        catalog = RestSource(f"{source.url}{path}", options=options, environ={"SHOP_TOKEN": TOKEN})
        assert list(catalog)
    assert [t for _, t in source.tokens()] == [TOKEN] * 3
    assert [p for p, _ in other.tokens()] == ["/page2"] * 3
    assert all(token is None for _, token in other.tokens())
