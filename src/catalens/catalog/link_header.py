"""RFC 8288 ``Link`` headers: the ``rel="next"`` target a paged REST response points to.

Shopify's REST Admin API (and GitHub's) pages this way: ``Link: <https://...&page_info=x>;
rel="next", <...>; rel="previous"``. httpx's ``Response.links`` keys each link by its whole
``rel`` string and splits on every comma, so ``rel="next last"`` or a comma inside a quoted
parameter or a URL would be misread; this parser follows the RFC's grammar instead.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx

_SPACE = " \t"


def parse_links(value: str) -> list[tuple[str, dict[str, str]]]:
    """Every ``<target>; param=value; ...`` in one header value, in order; parameter names
    lower-cased, the first of a repeated one kept (RFC 8288 section 3). Malformed pieces
    are skipped up to the next link rather than guessed at."""
    links: list[tuple[str, dict[str, str]]] = []
    i, end = 0, len(value)
    while i < end:
        start = value.find("<", i)
        if start < 0:
            break
        close = value.find(">", start + 1)
        if close < 0:
            break
        target = value[start + 1 : close].strip()
        params: dict[str, str] = {}
        i = close + 1
        while True:
            i = _skip(value, i, _SPACE)
            if i >= end or value[i] != ";":
                break
            i = _skip(value, i + 1, _SPACE)
            name_end = i
            while name_end < end and value[name_end] not in "=;,<" + _SPACE:
                name_end += 1
            name = value[i:name_end].lower()
            i = _skip(value, name_end, _SPACE)
            text = ""
            if i < end and value[i] == "=":
                i = _skip(value, i + 1, _SPACE)
                text, i = _param_value(value, i)
            if name:
                params.setdefault(name, text)
        links.append((target, params))
        # Anything else up to the next comma is not part of this grammar: skip it.
        while i < end and value[i] != ",":
            i += 1
    return links


def next_link(headers: Iterable[str], base: httpx.URL) -> httpx.URL | None:
    """The first link whose ``rel`` (a space-separated list, case-insensitive) holds
    ``next``, resolved against ``base`` (the URL the response came from); None if none."""
    for value in headers:
        for target, params in parse_links(value):
            if "next" in params.get("rel", "").lower().split():
                return base.join(target)
    return None


def _skip(value: str, i: int, chars: str) -> int:
    while i < len(value) and value[i] in chars:
        i += 1
    return i


def _param_value(value: str, i: int) -> tuple[str, int]:
    """A quoted-string (backslash escapes undone) or a token, and the index after it."""
    if i < len(value) and value[i] == '"':
        out: list[str] = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\" and i + 1 < len(value):
                i += 1
            out.append(value[i])
            i += 1
        return "".join(out), i + 1
    start = i
    while i < len(value) and value[i] not in ";," + _SPACE:
        i += 1
    return value[start:i], i
