"""``/docs`` and ``/redoc`` load every script and style from the app itself (no CDN)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import pytest

from catalens.settings import Settings

if TYPE_CHECKING:
    from conftest import Server

_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")
_ABSOLUTE = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    make_settings: Callable[..., Settings],
    start_server: Callable[..., AbstractContextManager[Server]],
) -> Iterator[Server]:
    settings = make_settings(tmp_path_factory.mktemp("docs-home"))
    with start_server(settings, wait_ready=False) as running:
        yield running


def _references(html: str) -> list[str]:
    found = [a or b for a, b in _REFERENCE.findall(html)]
    # The page's script (the spec URL) and tags, each an asset or the OpenAPI document.
    return [ref for ref in found if ref]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_assets_the_app_serves(server: Server, page: str) -> None:
    with server.client() as client:
        response = client.get(page)
        assert response.status_code == 200
        html = response.text
        outside = [
            url for url in _ABSOLUTE.findall(html) if urlsplit(url).hostname not in {None, ""}
        ]
        assert outside == [], f"{page} loads from outside the app: {outside}"
        references = _references(html)
        scripts = [ref for ref in references if ref.endswith(".js")]
        assert scripts, f"{page} names no script: {html[:500]}"
        for ref in references:
            url = urljoin(server.url + page, ref)
            assert url.startswith(server.url), ref
            asset = client.get(url)
            assert asset.status_code == 200, (ref, asset.status_code)
            assert asset.content, ref


def test_docs_assets_ship_with_the_package() -> None:
    from catalens.api.docs import _assets_dir

    assets = _assets_dir()
    assert assets is not None
    assert (assets / "swagger-ui-bundle.js").stat().st_size > 100_000
