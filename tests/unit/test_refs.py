"""``catalens.refs.is_url``: the one test of "is this reference an http(s) URL"."""

from __future__ import annotations

import pytest

from catalens.refs import is_url


@pytest.mark.parametrize(
    "ref",
    ["http://shop.example/a.jpg", "https://cdn.example/x", "HTTPS://CDN.EXAMPLE/X", "Http://a"],
)
def test_http_and_https_in_any_case_are_urls(ref: str) -> None:
    assert is_url(ref)


@pytest.mark.parametrize(
    "ref", ["images/a.jpg", "/srv/http://a.jpg", "file:///a.jpg", "ftp://host/a.jpg", "http:/a", ""]
)
def test_paths_and_other_schemes_are_not(ref: str) -> None:
    assert not is_url(ref)
