"""Which web pages may call the API from a browser, and what start-up warns about.

By default only the service's own pages may (``cors_origins`` empty): a preflight from any
other origin gets no ``Access-Control-Allow-Origin``, and ``OriginGuard`` refuses (403
``forbidden_origin``) any other request that changes something and carries a foreign
``Origin``, since a form post or a plain ``fetch`` needs no preflight. A key is still what
protects a write route: ``exposure_warnings`` says so at start-up when there is none.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from catalens.settings import Settings

__all__ = ["OriginGuard", "exposure_warnings", "is_loopback"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


class OriginGuard:
    """Refuse a request that changes something when a browser says it comes from a page of
    another origin than the service's own (``Host``, or ``X-Forwarded-Host`` behind a proxy)
    or those ``allowed`` (``"*"``: any). Requests without ``Origin`` (curl, servers) pass."""

    def __init__(self, app: ASGIApp, *, allowed: tuple[str, ...]) -> None:
        self.app = app
        self._any = "*" in allowed
        self._allowed = {origin.rstrip("/").lower() for origin in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._any or scope["method"] in _SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        origin = headers.get("origin")
        if origin is None or self._permits(origin, headers):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            {
                "error": "forbidden_origin",
                "detail": f"requests from pages at {origin} are not allowed "
                "(CATALENS_CORS_ORIGINS lists the origins that are)",
            },
            status_code=403,
        )
        await response(scope, receive, send)

    def _permits(self, origin: str, headers: dict[str, str]) -> bool:
        if origin.rstrip("/").lower() in self._allowed:
            return True
        own = {_host_port(headers.get("host", "")), _host_port(headers.get("x-forwarded-host", ""))}
        parts = urlsplit(origin)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return False  # "null" (a sandboxed page, a file) and anything odd
        host = parts.hostname.lower()
        port = str(parts.port) if parts.port else _DEFAULT_PORTS[parts.scheme]
        # The scheme is not compared: a proxy that ends TLS makes https pages reach us over
        # http. A Host without a port is a default one.
        defaulted = port in _DEFAULT_PORTS.values() and (host, None) in own
        return (host, port) in own or defaulted


def _host_port(host: str) -> tuple[str, str | None]:
    """``shop.example:8000`` -> ("shop.example", "8000"); no port -> (host, None)."""
    host = host.split(",")[0].strip().lower()
    if host.startswith("["):  # [::1]:8000
        name, _, rest = host[1:].partition("]")
        return name, rest.removeprefix(":") or None
    name, sep, port = host.rpartition(":")
    return (name, port) if sep and port.isdigit() else (host, None)


def is_loopback(host: str) -> bool:
    """Whether serving on ``host`` is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, "" or 0.0.0.0-like: assume other machines can reach it


def exposure_warnings(settings: Settings) -> list[str]:
    """What start-up logs about a service others can reach without a key."""
    if settings.api_keys:
        return []
    warnings = []
    if not is_loopback(settings.host):
        warnings.append(
            f"serving on {settings.host}, which other machines can reach, without API keys: "
            "anyone who reaches it can create, change and delete collections. Set "
            "CATALENS_API_KEYS (see docs/api.md, Security model)"
        )
    if "*" in settings.cors_origins:
        warnings.append(
            "CATALENS_CORS_ORIGINS allows any web page (*) and there are no API keys: any "
            "page a visitor opens can change the collections through their browser"
        )
    return warnings
