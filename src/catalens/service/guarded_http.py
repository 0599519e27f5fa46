"""An HTTP client for a REST catalog named over the HTTP API, behind the address guard.

Every request it sends, each redirect hop included, is checked by the ``AddressGuard`` and
connected to the address that was checked (``Host`` and TLS SNI keep the name), as the image
fetcher does: a backend URL a write route names cannot reach loopback, the private network
or a metadata endpoint unless its host is in ``CATALENS_URL_ALLOWLIST``.
"""

from __future__ import annotations

import httpx

from catalens import __version__
from catalens.ingest.url_guard import AddressGuard

__all__ = ["GuardedTransport", "guarded_client"]


class GuardedTransport(httpx.BaseTransport):
    """Refuses (``BlockedURLError``) a request whose URL the guard refuses; sends the others
    to the vetted address."""

    def __init__(self, guard: AddressGuard, inner: httpx.BaseTransport | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        address = self._guard.check_url(str(url))
        if address is None or address == url.host:
            return self._inner.handle_request(request)
        # A copy goes out: the client keeps ``request`` (with the name) as the response's
        # request, so redirects are resolved and compared against the name, not the address.
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
        pinned = httpx.Request(
            request.method,
            url.copy_with(host=address),
            headers=request.headers,  # its Host header names the original host[:port]
            stream=request.stream,
            extensions=extensions,
        )
        return self._inner.handle_request(pinned)

    def close(self) -> None:
        self._inner.close()


def guarded_client(guard: AddressGuard, *, timeout: float = 30.0) -> httpx.Client:
    """An ``httpx.Client`` whose every request passes ``guard`` (see ``GuardedTransport``)."""
    return httpx.Client(
        transport=GuardedTransport(guard),
        timeout=timeout,
        follow_redirects=True,
        headers={"User-Agent": f"catalens/{__version__}", "Accept": "application/json"},
    )
