"""A collection's source as read routes show it: header values and tokens never leave it.

``Collection.info()`` (behind ``GET /v1/collections/{name}``, the catalog page and the CLI)
shows a source through ``shown_source``: the header names a source sends with their values
replaced by ``REDACTED``, a URL's password and secret-looking query values too. A named
credential (``options.credential``) is shown by name; its secret lives in the settings only.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from catalens.collection.config import SourceConfig

__all__ = ["REDACTED", "shown_source", "shown_url"]

REDACTED = "<redacted>"

_SECRET_PARAM = re.compile(r"token|key|secret|passw|pwd|auth|sig|credential|session", re.IGNORECASE)
"""Query parameters whose values are hidden: ``access_token``, ``api_key``, ``signature``..."""


def shown_source(source: SourceConfig | None) -> dict[str, Any] | None:
    """``source`` as a JSON-able mapping with every secret value replaced by ``REDACTED``."""
    if source is None:
        return None
    shown = asdict(source)
    shown["location"] = shown_url(source.location)
    options = dict(source.options)
    headers = options.get("headers")
    if isinstance(headers, dict):
        options["headers"] = {str(name): REDACTED for name in headers}
    elif headers is not None:
        options["headers"] = REDACTED
    shown["options"] = options
    return shown


def shown_url(location: str) -> str:
    """``location`` without a password in it or values of secret-looking query parameters
    (a local path is returned as it is)."""
    parts = urlsplit(location)
    if parts.scheme.lower() not in ("http", "https"):
        return location
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{REDACTED}@{netloc.rpartition('@')[2]}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(_SECRET_PARAM.search(name) for name, _ in pairs):
        query = urlencode(
            [(name, REDACTED if _SECRET_PARAM.search(name) else value) for name, value in pairs],
            safe="<>",
        )
    else:
        query = parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
