"""Issue 13 item 1: source secrets are the operator's. A source names a declared credential
(never an environment variable), the credential is sent only where the operator allows, and
no read (``info()``, the stored source shown, the CLI) shows a header value or token. On the
fake embedder with a real loopback backend that records the headers it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image
from typer.testing import CliRunner

from catalens.cli.commands import app
from catalens.collection.config import SourceConfig
from catalens.collection.redact import REDACTED, shown_url
from catalens.errors import ConfigError
from catalens.service.service import CatalensService
from catalens.service.trusted import TRUSTED_REFS
from catalens.settings import Settings, SourceCredential

TOKEN = "tok-0123456789-secret"
HEADER_SECRET = "hdr-9876543210-secret"


class _Backend(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []
    image: ClassVar[bytes] = b""

    def do_GET(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        if self.path.startswith("/products"):
            host = self.headers["Host"]
            items = [{"id": "m1", "name": "M", "image": f"http://{host}/m1.png"}]
            kind, body = "application/json", json.dumps(items).encode()
        else:
            kind, body = "image/png", self.image
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A shop backend on 127.0.0.1: (base URL, the headers of every request it got)."""
    image = tmp_path / "m1.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    handler = type("Backend", (_Backend,), {"seen": [], "image": image.read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.seen
    finally:
        server.shutdown()
        server.server_close()


def _rest(url: str, **options: Any) -> SourceConfig:
    return SourceConfig(location=url, format="rest", options=options)


def _operator(
    make: Callable[..., CatalensService], base: str, **credential: Any
) -> CatalensService:
    """A service whose operator declared the credential ``shop`` for ``base``."""
    declared = SourceCredential(header="X-Shop-Token", value=TOKEN, **credential)
    return make(
        url_allowlist=(base.removeprefix("http://"),),
        source_credentials={"shop": declared},
    )


def test_an_api_source_sends_only_a_declared_credential_and_never_shows_it(
    make_fake_service: Callable[..., CatalensService],
    backend: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = backend
    service = _operator(make_fake_service, base, urls=(f"{base}/",))
    # Created as over the HTTP API (no ``trusted``): untrusted, checked now.
    source = _rest(f"{base}/products", credential="shop", headers={"X-Tenant": HEADER_SECRET})
    service.create_collection("meds", source=source)
    report = service.sync("meds")
    assert (report.products_added, report.images_failed) == (1, 0)
    page = seen[0]
    assert page["x-shop-token"] == TOKEN  # the backend got the operator's token
    assert page["x-tenant"] == HEADER_SECRET
    info = json.dumps(service.collection("meds").info())
    assert TOKEN not in info and HEADER_SECRET not in info
    shown = service.collection("meds").info()["source"]
    assert shown["options"]["headers"] == {"X-Tenant": REDACTED}
    assert shown["options"]["credential"] == "shop"
    # The token is never stored with the collection either: only the credential's name.
    stored = json.dumps(service.collection("meds").ledger.config())
    assert TOKEN not in stored


def test_the_api_cannot_name_a_secret_the_operator_did_not_declare_for_that_url(
    make_fake_service: Callable[..., CatalensService],
    backend: tuple[str, list[dict[str, str]]],
) -> None:
    base, seen = backend
    service = _operator(make_fake_service, base, urls=("http://shop.example/",))
    with pytest.raises(ConfigError, match="auth_token_env"):
        service.create_collection("env", source=_rest(f"{base}/products", auth_token_env="HOME"))
    with pytest.raises(ConfigError, match="no source credential 'other'"):
        service.create_collection("undeclared", source=_rest(f"{base}/p", credential="other"))
    # Declared, but for another backend: a write key cannot send it somewhere else.
    with pytest.raises(ConfigError, match="may not be sent to"):
        service.create_collection("elsewhere", source=_rest(f"{base}/p", credential="shop"))
    # A look-alike host is not under the allowed prefix.
    assert not SourceCredential(urls=("http://shop.example/",)).allows("http://shop.example.evil/")
    assert SourceCredential(urls=("http://shop.example/api/",)).allows("http://shop.example/api/x")
    assert service.collection_names() == []
    assert seen == []


def test_a_credential_without_urls_is_for_the_operator_only(
    make_fake_service: Callable[..., CatalensService],
    backend: tuple[str, list[dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base, seen = backend
    monkeypatch.setenv("SHOP_TOKEN_FOR_TEST", TOKEN)
    declared = SourceCredential(header="Authorization", env="SHOP_TOKEN_FOR_TEST")
    service = make_fake_service(
        url_allowlist=(base.removeprefix("http://"),), source_credentials={"shop": declared}
    )
    with pytest.raises(ConfigError, match="may not be sent to"):
        service.create_collection("api", source=_rest(f"{base}/products", credential="shop"))
    # The library (like the CLI) is the operator: it may use it anywhere.
    service.ingest("lib", _rest(f"{base}/products", credential="shop"))
    assert seen[0]["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in json.dumps(service.collection("lib").info())


def test_headers_given_by_the_library_are_redacted_in_every_read(
    isolated_home: Path, make_fake_service: Callable[..., CatalensService]
) -> None:
    service = make_fake_service(home=isolated_home)
    location = f"http://user:pw-{HEADER_SECRET}@127.0.0.1:1/products?api_key={TOKEN}&page=2"
    source = _rest(location, headers={"Authorization": f"Bearer {TOKEN}"})
    service.create_collection("lib", source=source, trusted=TRUSTED_REFS)
    info = service.collection("lib").info()
    text = json.dumps(info)
    assert TOKEN not in text and HEADER_SECRET not in text
    assert info["source"]["options"]["headers"] == {"Authorization": REDACTED}
    assert "page=2" in info["source"]["location"] and "user:" in info["source"]["location"]
    summaries = json.dumps([vars(s) for s in service.summaries()], default=str)
    assert TOKEN not in summaries
    service.close()
    listed = CliRunner().invoke(app, ["collections", "--json"])
    assert listed.exit_code == 0, listed.output
    assert TOKEN not in listed.output and HEADER_SECRET not in listed.output


def test_shown_url_hides_passwords_and_secret_query_values() -> None:
    assert shown_url("/data/catalog.csv") == "/data/catalog.csv"
    assert shown_url("https://shop.example/p?page=2") == "https://shop.example/p?page=2"
    hidden = shown_url("https://a:b@shop.example/p?access_token=xyz&page=2&signature=s")
    assert "xyz" not in hidden and ":b@" not in hidden and "=s" not in hidden.split("page=2")[1]
    assert "page=2" in hidden


def test_credentials_are_read_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(
        "CATALENS_SOURCE_CREDENTIALS",
        json.dumps({"shop": {"header": "X-Shop-Token", "env": "SHOP_T", "urls": ["https://s/"]}}),
    )
    monkeypatch.setenv("SHOP_T", TOKEN)
    settings = Settings(home=tmp_path)
    credential = settings.source_credentials["shop"]
    assert credential.header_value() == TOKEN  # no scheme for a header other than Authorization
    assert TOKEN not in repr(settings)
    inline = SourceCredential(value="abc")  # type: ignore[arg-type]
    assert inline.header_value() == "Bearer abc" and "abc" not in repr(inline)
