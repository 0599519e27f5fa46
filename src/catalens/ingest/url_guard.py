"""The SSRF guard: refuse URLs whose host is, or resolves to, an internal address.

Catalog files come from outside; an image URL pointing at ``169.254.169.254`` or a service
on the private network must not be fetched on their behalf. ``is_blocked_address`` is a pure
classification; ``AddressGuard`` resolves a URL's host and applies it to every address.

``check_url`` returns the vetted address, and the fetcher connects to that address (with the
original host in ``Host`` and TLS SNI) rather than letting the HTTP client resolve the name
again: a hostile DNS server cannot answer a public address to the check and a private one to
the connection a moment later (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from catalens.errors import BlockedURLError, FetchError

__all__ = ["AddressGuard", "is_blocked_address", "resolve_host"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# First match wins, so the specific entries (metadata endpoints) come before their ranges.
_BLOCKED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("169.254.169.254/32"), "cloud metadata"),  # AWS, GCP, Azure, OpenStack, ...
    (_V4("100.100.100.200/32"), "cloud metadata"),  # Alibaba Cloud
    (_V4("0.0.0.0/8"), "unspecified"),  # Linux connects 0.0.0.0 to the local host
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("100.64.0.0/10"), "shared address space (CGNAT)"),
    (_V4("192.0.0.0/24"), "reserved"),
    (_V4("192.0.2.0/24"), "documentation"),
    (_V4("198.51.100.0/24"), "documentation"),
    (_V4("203.0.113.0/24"), "documentation"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
)
_BLOCKED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("fd00:ec2::254/128"), "cloud metadata"),  # AWS over IPv6
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/96"), "reserved"),  # deprecated IPv4-compatible addresses
    (_V6("64:ff9b:1::/48"), "reserved"),  # local-use NAT64
    (_V6("100::/64"), "reserved"),  # discard-only
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("fc00::/7"), "unique local (fc00::/7)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
)
# Well-known NAT64 prefix: the last 32 bits are an IPv4 address the gateway will connect to.
_NAT64 = _V6("64:ff9b::/96")


def is_blocked_address(ip: str | IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from ("loopback", "private", ...), or ``None`` if public.

    IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by that
    address. Raises ``ValueError`` when ``ip`` is not an IP address.
    """
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            return is_blocked_address(embedded)
        table: tuple[tuple[_V4, str], ...] | tuple[tuple[_V6, str], ...] = _BLOCKED_V6
    else:
        table = _BLOCKED_V4
    for network, reason in table:
        if address in network:
            return reason
    # Whatever IANA lists as not globally routable and the tables above do not name.
    return None if address.is_global else "reserved"


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver), without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class AddressGuard:
    """Refuses URLs that are not http(s) or whose host resolves to any blocked address.

    ``allow_hosts`` names hosts (``"images.internal"``) or host:port pairs
    (``"127.0.0.1:8080"``) that are trusted even though they resolve to blocked addresses.
    ``resolver`` maps (host, port) to address strings; tests pass a fake.
    """

    allow_hosts: frozenset[str] = frozenset()
    resolver: Callable[[str, int], list[str]] = field(default=resolve_host)

    def __post_init__(self) -> None:
        # Hostnames compare case-insensitively and without a trailing root dot.
        normalised = frozenset(_normalise_host(entry) for entry in self.allow_hosts)
        object.__setattr__(self, "allow_hosts", normalised)

    def check_url(self, url: str) -> str | None:
        """The address to connect to if ``url`` may be fetched (an IPv4 one first, when the
        host has several), ``None`` for an allowed host (connect by name); raise
        ``BlockedURLError`` if it may not.

        A host that cannot be resolved raises ``FetchError`` (it is not blocked, just
        unreachable).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise BlockedURLError(url, f"scheme {scheme or '(none)'!r} is not allowed")
        host = _normalise_host(parts.hostname or "")
        if not host:
            raise BlockedURLError(url, "URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise BlockedURLError(url, "URL has an invalid port") from None
        if self._allowed(host, port):
            return None
        addresses = self._addresses(url, host, port)
        for address in addresses:
            try:
                reason = is_blocked_address(address)
            except ValueError:
                reason = "not an IP address"
            if reason is not None:
                raise BlockedURLError(url, f"{host} resolves to {address} ({reason})")
        return min(addresses, key=lambda address: ":" in address)  # IPv4 first, stable

    def _allowed(self, host: str, port: int) -> bool:
        candidates = {host, f"{host}:{port}", f"[{host}]:{port}"}
        return not candidates.isdisjoint(self.allow_hosts)

    def _addresses(self, url: str, host: str, port: int) -> list[str]:
        try:
            # A literal address is judged as written; no resolver involved.
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            addresses = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchError(url, f"cannot resolve {host} ({exc})") from exc
        if not addresses:
            raise FetchError(url, f"cannot resolve {host} (no addresses)")
        return addresses


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _normalise_host(host: str) -> str:
    host = host.strip().lower()
    if host.endswith("."):
        host = host[:-1]
    return host
