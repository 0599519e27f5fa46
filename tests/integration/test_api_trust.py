"""Issue 13 items 1 and 9 over real HTTP: no read route shows a source's header values or
tokens, a write key names only credentials the operator declared, only the service's own
pages (and the listed origins) may call it from a browser, and start-up warns when it is
reachable by others without keys."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from catalens.api.origins import exposure_warnings
from catalens.settings import Settings, SourceCredential

if TYPE_CHECKING:
    from conftest import ImageServer, Server


TOKEN = "tok-5f1c2e-never-shown"
HEADER_SECRET = "hdr-77a0b9-never-shown"
ALLOWED = "https://shop.example"
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., AbstractContextManager[Server]],
    image_server: ImageServer,
) -> Iterator[Server]:
    backend = image_server.url("/")
    settings = make_settings(
        tmp_path_factory.mktemp("api-security"),
        url_allowlist=(f"127.0.0.1:{image_server.port}",),
        source_credentials={
            "shop": SourceCredential(header="X-Shop-Token", value=TOKEN, urls=(backend,))  # type: ignore[arg-type]
        },
        cors_origins=(ALLOWED,),
    )
    with start_server(settings) as running:
        yield running


def _wait(client: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    return job


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    return str(body["detail"])


def test_no_read_route_shows_a_source_secret(
    client: httpx.Client, image_server: ImageServer
) -> None:
    source = {
        "location": image_server.url(f"/medicines?api_key={TOKEN}"),
        "format": "rest",
        "options": {"credential": "shop", "headers": {"X-Tenant": HEADER_SECRET}},
    }
    created = client.post("/v1/collections", json={"name": "meds", "source": source})
    assert created.status_code == 201, created.text
    job = _wait(client, created.json()["job"])
    assert job["state"] == "succeeded", job  # the credential reached the allowed backend
    reads = [
        created,
        client.get("/v1/collections/meds"),
        client.get("/v1/collections"),
        client.get(f"/v1/jobs/{job['id']}"),
        client.get("/v1/jobs"),
        client.get("/"),
        client.get("/catalog"),
        client.get("/metrics"),
        client.get("/openapi.json"),
    ]
    for response in reads:
        assert response.status_code in (200, 201), (response.request.url, response.text)
        assert TOKEN not in response.text, response.request.url
        assert HEADER_SECRET not in response.text, response.request.url
    shown = client.get("/v1/collections/meds").json()["source"]
    assert shown["options"]["headers"] == {"X-Tenant": "<redacted>"}
    assert shown["options"]["credential"] == "shop"


def test_a_write_key_names_no_environment_variable_and_no_undeclared_credential(
    client: httpx.Client, image_server: ImageServer
) -> None:
    url = image_server.url("/medicines")
    for options, needle in (
        ({"auth_token_env": "CATALENS_API_KEYS"}, "auth_token_env"),
        ({"credential": "nope"}, "no source credential 'nope'"),
    ):
        body = {"name": "bad", "source": {"location": url, "format": "rest", "options": options}}
        assert needle in _error(client.post("/v1/collections", json=body), 422, "invalid_request")
    _error(client.get("/v1/collections/bad"), 404, "collection_not_found")


def test_only_listed_origins_get_cors(client: httpx.Client) -> None:
    ask = {"Access-Control-Request-Method": "DELETE"}
    evil = client.options("/v1/collections/meds", headers={"Origin": EVIL, **ask})
    assert "access-control-allow-origin" not in evil.headers
    allowed = client.options("/v1/collections/meds", headers={"Origin": ALLOWED, **ask})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    read = client.get("/health", headers={"Origin": EVIL})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


def test_a_foreign_page_cannot_write_without_a_preflight(
    client: httpx.Client, server: Server
) -> None:
    client.post("/v1/collections", json={"name": "victim"})
    try:
        # What a form post or a plain fetch from another site sends: no preflight needed.
        detail = _error(
            client.delete("/v1/collections/victim", headers={"Origin": EVIL}),
            403,
            "forbidden_origin",
        )
        assert "CATALENS_CORS_ORIGINS" in detail
        _error(
            client.post(
                "/v1/collections/victim/sync",
                headers={"Origin": "null", "Content-Type": "text/plain"},
            ),
            403,
            "forbidden_origin",
        )
        assert client.get("/v1/collections/victim").status_code == 200
    finally:
        # The service's own pages (same origin) and a listed origin may.
        own = client.delete("/v1/collections/victim", headers={"Origin": server.url})
        assert own.status_code == 200, own.text
    client.post("/v1/collections", json={"name": "victim"})
    listed = client.delete("/v1/collections/victim", headers={"Origin": ALLOWED})
    assert listed.status_code == 200, listed.text


def test_start_up_warns_when_others_can_reach_it_without_keys(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., AbstractContextManager[Server]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="catalens.api")
    # The test binds loopback whatever the setting says; the setting is what is checked.
    with start_server(make_settings(tmp_path / "open", host="0.0.0.0"), wait_ready=False):
        pass
    warned = [r.getMessage() for r in caplog.records if r.name == "catalens.api"]
    assert any("0.0.0.0" in m and "CATALENS_API_KEYS" in m for m in warned), warned


def test_exposure_warnings(tmp_path: Path) -> None:
    def warnings(**values: Any) -> list[str]:
        return exposure_warnings(Settings(home=tmp_path, **values))

    assert warnings() == []  # loopback, no keys: only this machine can reach it
    assert warnings(host="::1") == []
    assert len(warnings(host="0.0.0.0")) == 1
    assert len(warnings(host="shop.internal")) == 1
    assert warnings(host="0.0.0.0", api_keys=("k",)) == []
    assert any("(*)" in w for w in warnings(cors_origins=("*",)))
