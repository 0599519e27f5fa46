"""ingest/url_guard.py: classification only, and check_url through a fake resolver (no packets)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from catalens.errors import BlockedURLError, FetchError
from catalens.ingest.url_guard import AddressGuard, is_blocked_address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "shared address space (CGNAT)"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "documentation"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "unique local (fc00::/7)"),
        ("fd12:3456::1", "unique local (fc00::/7)"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("ff02::1", "multicast"),
        ("fd00:ec2::254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 to 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 around 10.0.0.1
        ("2001:db8::1", "documentation"),
    ],
)
def test_blocked_addresses(address: str, reason: str) -> None:
    assert is_blocked_address(address) == reason


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses(address: str) -> None:
    assert is_blocked_address(address) is None


def test_accepts_address_objects() -> None:
    assert is_blocked_address(ipaddress.ip_address("192.168.0.1")) == "private"
    assert is_blocked_address(ipaddress.IPv6Address("2606:4700::1111")) is None


def test_rejects_non_addresses() -> None:
    with pytest.raises(ValueError):
        is_blocked_address("example.com")


class FakeResolver:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


RESOLVER = FakeResolver(
    {
        "cdn.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
        "sneaky.example.com": ["93.184.216.34", "10.0.0.5"],
        "metadata.example.com": ["169.254.169.254"],
        "images.internal": ["192.168.5.5"],
        "empty.example.com": [],
    }
)


def test_public_host_passes() -> None:
    guard = AddressGuard(resolver=RESOLVER)
    guard.check_url("https://cdn.example.com/a.jpg")
    guard.check_url("http://8.8.8.8/a.jpg")


def test_any_blocked_address_blocks() -> None:
    guard = AddressGuard(resolver=RESOLVER)
    with pytest.raises(BlockedURLError) as info:
        guard.check_url("https://sneaky.example.com/a.jpg")
    assert info.value.url == "https://sneaky.example.com/a.jpg"
    assert info.value.reason == "sneaky.example.com resolves to 10.0.0.5 (private)"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://metadata.example.com/latest/meta-data/", "cloud metadata"),
        ("http://127.0.0.1:8080/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://169.254.169.254/", "cloud metadata"),
    ],
)
def test_blocked_urls(url: str, reason: str) -> None:
    with pytest.raises(BlockedURLError, match=reason):
        AddressGuard(resolver=RESOLVER).check_url(url)


def test_literal_addresses_skip_the_resolver() -> None:
    resolver = FakeResolver({})
    with pytest.raises(BlockedURLError):
        AddressGuard(resolver=resolver).check_url("http://10.0.0.1/")
    assert resolver.calls == []


@pytest.mark.parametrize(
    "url", ["ftp://cdn.example.com/a.jpg", "file:///etc/passwd", "gopher://x/", "/local/path"]
)
def test_non_http_schemes_blocked(url: str) -> None:
    with pytest.raises(BlockedURLError, match="scheme"):
        AddressGuard(resolver=RESOLVER).check_url(url)


def test_missing_host_and_bad_port() -> None:
    guard = AddressGuard(resolver=RESOLVER)
    with pytest.raises(BlockedURLError, match="no host"):
        guard.check_url("http:///a.jpg")
    with pytest.raises(BlockedURLError, match="invalid port"):
        guard.check_url("http://cdn.example.com:99999/")


def test_resolver_gets_default_ports() -> None:
    resolver = FakeResolver({"cdn.example.com": ["93.184.216.34"]})
    guard = AddressGuard(resolver=resolver)
    guard.check_url("https://cdn.example.com/a")
    guard.check_url("http://CDN.example.com./a")
    guard.check_url("http://cdn.example.com:8080/a")
    assert resolver.calls == [
        ("cdn.example.com", 443),
        ("cdn.example.com", 80),
        ("cdn.example.com", 8080),
    ]


def test_unresolvable_host_is_a_fetch_error_not_a_block() -> None:
    guard = AddressGuard(resolver=RESOLVER)
    with pytest.raises(FetchError, match="cannot resolve") as info:
        guard.check_url("http://nowhere.example.com/")
    assert not isinstance(info.value, BlockedURLError)
    with pytest.raises(FetchError, match="no addresses"):
        guard.check_url("http://empty.example.com/")


def test_allow_hosts_by_name() -> None:
    guard = AddressGuard(allow_hosts=frozenset({"Images.Internal"}), resolver=RESOLVER)
    guard.check_url("http://images.internal/a.png")
    guard.check_url("http://images.internal:9000/a.png")


def test_allow_hosts_by_host_and_port() -> None:
    guard = AddressGuard(allow_hosts=frozenset({"127.0.0.1:8080", "[::1]:81"}), resolver=RESOLVER)
    guard.check_url("http://127.0.0.1:8080/a.png")
    guard.check_url("http://[::1]:81/a.png")
    with pytest.raises(BlockedURLError):
        guard.check_url("http://127.0.0.1:8081/a.png")
    with pytest.raises(BlockedURLError):
        guard.check_url("http://127.0.0.1/a.png")


def test_default_resolver_is_real_getaddrinfo() -> None:
    # localhost resolves from the hosts file; no packet leaves the machine.
    with pytest.raises(BlockedURLError, match="loopback"):
        AddressGuard().check_url("http://localhost:1/")
