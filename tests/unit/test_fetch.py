"""ingest/fetch.py against a real ThreadingHTTPServer on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from catalens.errors import (
    BlockedURLError,
    CatalensError,
    FetchError,
    ImageDecodeError,
    ImageError,
    ImageTooLargeError,
)
from catalens.ingest.decode import content_hash
from catalens.ingest.fetch import FetchedImage, ImageFetcher
from catalens.ingest.url_guard import AddressGuard


def png_bytes(color: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, "PNG")
    return buffer.getvalue()


PNG = png_bytes()
PNG2 = png_bytes((0, 0, 255))
SLOW_SECONDS = 2.0


class ImageServer:
    """Serves the test routes and counts hits per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.other_port = 0  # where /to-other redirects
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.stop.set()  # wakes slow handlers so server_close can join them quickly
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass  # keep test output quiet

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.hits[path] += 1
                    count = server.hits[path]
                # the client may hang up early (timeouts, size cap): expected
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._route(path, count)

            def _send(self, status: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                if "Content_Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _route(self, path: str, count: int) -> None:
                if path in ("/img.png", "/dup.png"):
                    self._send(200, PNG, Content_Type="image/png")
                elif path == "/img2.png":
                    self._send(200, PNG2, Content_Type="image/png")
                elif path == "/missing":
                    self._send(404, b"not found")
                elif path == "/forbidden":
                    self._send(403, b"no")
                elif path == "/slow":
                    server.stop.wait(SLOW_SECONDS)
                    self._send(200, PNG)
                elif path.startswith("/delay/"):
                    # Counted down before answering, so a client that already has its
                    # answer is never still counted as in flight.
                    with server._lock:
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.stop.wait(int(path.split("/")[2]) / 1000)
                    with server._lock:
                        server.in_flight -= 1
                    self._send(200, png_bytes((count % 256, 0, 0)))
                elif path == "/flaky":
                    if count <= 2:
                        self._send(503, b"try later")
                    else:
                        self._send(200, PNG)
                elif path == "/ratelimited":
                    self._send(429, b"slow down")
                elif path == "/big":
                    self._send(200, PNG + b"\x00" * 5000)
                elif path == "/big-stream":
                    # no Content-Length: HTTP/1.0 body delimited by closing the connection
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(PNG + b"\x00" * 5000)
                elif path == "/text":
                    self._send(200, b"<html>hello</html>", Content_Type="text/html")
                elif path == "/empty":
                    self._send(200, b"")
                elif path.startswith("/redirect/"):
                    hops = int(path.split("/")[2])
                    target = "/img.png" if hops == 0 else f"/redirect/{hops - 1}"
                    self._send(302, Location=target)
                elif path == "/relative":
                    self._send(301, Location="img2.png")
                elif path == "/to-other":
                    self._send(302, Location=f"http://localhost:{server.other_port}/img.png")
                else:
                    self._send(404)

        return Handler


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx honours proxy variables; loopback tests must not go through one."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    srv = ImageServer()
    yield srv
    srv.close()


@pytest.fixture
def make_fetcher(tmp_path: Path) -> Iterator[Callable[..., ImageFetcher]]:
    made: list[ImageFetcher] = []

    def make(**options: object) -> ImageFetcher:
        options.setdefault("backoff", 0.01)
        options.setdefault("timeout", 2.0)
        fetcher = ImageFetcher(tmp_path / "cache", **options)  # type: ignore[arg-type]
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


# --- downloads and the cache -----------------------------------------------------------------


def test_download_then_cache_hit(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher], tmp_path: Path
) -> None:
    url = server.url("/img.png")
    fetcher = make_fetcher()
    first = fetcher.fetch(url)
    assert first == FetchedImage(ref=url, data=PNG, content_hash=content_hash(PNG), cached=False)
    second = fetcher.fetch(url)
    assert second.cached and second.data == PNG
    assert server.hits["/img.png"] == 1
    digest = first.content_hash
    assert (tmp_path / "cache" / "blobs" / digest[:2] / digest).read_bytes() == PNG


def test_rerun_with_new_fetcher_never_redownloads(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    url = server.url("/img.png")
    with make_fetcher() as fetcher:
        assert not fetcher.fetch(url).cached
    again = make_fetcher().fetch(url)
    assert again.cached and again.data == PNG
    assert server.hits["/img.png"] == 1


def test_damaged_blob_is_fetched_again(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher], tmp_path: Path
) -> None:
    url = server.url("/img.png")
    fetcher = make_fetcher()
    digest = fetcher.fetch(url).content_hash
    (tmp_path / "cache" / "blobs" / digest[:2] / digest).write_bytes(b"garbage")
    result = fetcher.fetch(url)
    assert not result.cached and result.data == PNG
    assert server.hits["/img.png"] == 2


@pytest.mark.parametrize(("path", "status"), [("/missing", 404), ("/forbidden", 403)])
def test_client_errors_fail_at_once(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher], path: str, status: int
) -> None:
    url = server.url(path)
    with pytest.raises(FetchError) as info:
        make_fetcher(retries=3).fetch(url)
    assert str(info.value) == f"{url}: HTTP {status}"
    assert server.hits[path] == 1


def test_timeout_is_retried_then_reported(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    url = server.url("/slow")
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        make_fetcher(timeout=0.2, retries=1).fetch(url)
    assert info.value.reason == "timed out (2 attempts)"
    assert server.hits["/slow"] == 2
    assert time.monotonic() - started < SLOW_SECONDS


def test_flaky_server_succeeds_on_third_attempt(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    result = make_fetcher(retries=3).fetch(server.url("/flaky"))
    assert result.data == PNG and not result.cached
    assert server.hits["/flaky"] == 3


def test_retries_run_out(server: ImageServer, make_fetcher: Callable[..., ImageFetcher]) -> None:
    with pytest.raises(FetchError, match=r"HTTP 503 \(2 attempts\)"):
        make_fetcher(retries=1).fetch(server.url("/flaky"))
    with pytest.raises(FetchError, match=r"HTTP 429 \(1 attempt\)"):
        make_fetcher(retries=0).fetch(server.url("/ratelimited"))
    assert server.hits["/flaky"] == 2


@pytest.mark.parametrize("path", ["/big", "/big-stream"])
def test_size_cap(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher], path: str
) -> None:
    url = server.url(path)
    with pytest.raises(ImageTooLargeError, match="over the limit of 1000 bytes") as info:
        make_fetcher(max_bytes=1000).fetch(url)
    assert info.value.source == url
    assert server.hits[path] == 1  # not retried


def test_non_image_body_is_refused_and_not_cached(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    url = server.url("/text")
    fetcher = make_fetcher()
    for _ in range(2):
        with pytest.raises(ImageDecodeError) as info:
            fetcher.fetch(url)
        assert str(info.value) == f"{url}: not an image (unrecognised format)"
    assert server.hits["/text"] == 2
    with pytest.raises(ImageDecodeError, match="empty file"):
        fetcher.fetch(server.url("/empty"))


def test_redirect_chain_is_followed_and_cached_under_the_first_url(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    url = server.url("/redirect/3")
    fetcher = make_fetcher()
    assert fetcher.fetch(url).data == PNG
    assert fetcher.fetch(url).cached
    assert [server.hits[f"/redirect/{n}"] for n in range(4)] == [1, 1, 1, 1]
    assert server.hits["/img.png"] == 1
    assert fetcher.fetch(server.url("/relative")).data == PNG2


def test_too_many_redirects(server: ImageServer, make_fetcher: Callable[..., ImageFetcher]) -> None:
    fetcher = make_fetcher()
    assert fetcher.fetch(server.url("/redirect/4")).data == PNG  # five redirects: the limit
    with pytest.raises(FetchError, match="too many redirects"):
        fetcher.fetch(server.url("/redirect/5"))


# --- the address guard -----------------------------------------------------------------------


def test_guard_blocks_redirect_to_internal_host(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    other = ImageServer()
    try:
        server.other_port = other.port
        guard = AddressGuard(allow_hosts=frozenset({f"127.0.0.1:{server.port}"}))
        fetcher = make_fetcher(guard=guard)
        assert fetcher.fetch(server.url("/img.png")).data == PNG  # allowlisted host:port
        url = server.url("/to-other")
        with pytest.raises(BlockedURLError) as info:
            fetcher.fetch(url)
        assert info.value.url == url
        assert f"redirected to http://localhost:{other.port}/img.png" in info.value.reason
        assert "loopback" in info.value.reason
        assert sum(other.hits.values()) == 0
    finally:
        other.close()


def test_guard_blocks_initial_url_without_a_request(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    with pytest.raises(BlockedURLError, match="loopback"):
        make_fetcher(guard=AddressGuard()).fetch(server.url("/img.png"))
    assert sum(server.hits.values()) == 0


def test_guard_connects_to_the_address_it_checked(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    """DNS rebinding: the check is told a public address, the system resolver would say
    loopback. The fetcher dials the checked address, so the local server sees nothing."""
    guard = AddressGuard(resolver=lambda host, port: ["93.184.216.34"])  # public
    fetcher = make_fetcher(guard=guard, retries=0, timeout=0.5)
    with pytest.raises(FetchError) as info:
        fetcher.fetch(f"http://localhost:{server.port}/img.png")
    assert not isinstance(info.value, BlockedURLError)  # allowed, then not reachable
    assert sum(server.hits.values()) == 0


def test_a_pinned_request_names_the_host_in_host_and_sni(
    make_fetcher: Callable[..., ImageFetcher],
) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": "/img.png"})
        return httpx.Response(200, content=PNG)

    client = httpx.Client(transport=httpx.MockTransport(answer))
    guard = AddressGuard(resolver=lambda host, port: ["2606:4700::1", "93.184.216.34"])
    fetcher = make_fetcher(guard=guard, client=client)
    assert fetcher.fetch("https://cdn.example.com:8443/moved").data == PNG
    assert [str(r.url) for r in seen] == [
        "https://93.184.216.34:8443/moved",
        "https://93.184.216.34:8443/img.png",  # the redirect resolved against the name
    ]
    assert {r.headers["host"] for r in seen} == {"cdn.example.com:8443"}
    assert {r.extensions["sni_hostname"] for r in seen} == {"cdn.example.com"}
    client.close()


# --- local files -----------------------------------------------------------------------------


def test_local_paths(make_fetcher: Callable[..., ImageFetcher], tmp_path: Path) -> None:
    images = tmp_path / "shop"
    images.mkdir()
    (images / "a.png").write_bytes(PNG)
    (images / "notes.jpg").write_text("not an image")
    fetcher = make_fetcher(base_dir=images)
    relative = fetcher.fetch("a.png")
    assert relative == FetchedImage("a.png", PNG, content_hash(PNG), cached=True)
    assert fetcher.fetch(str(images / "a.png")).data == PNG
    assert fetcher.fetch((images / "a.png").as_uri()).data == PNG
    with pytest.raises(ImageError, match="no such file"):
        fetcher.fetch("missing.png")
    with pytest.raises(ImageDecodeError, match=r"notes\.jpg: not an image"):
        fetcher.fetch("notes.jpg")
    with pytest.raises(ImageTooLargeError):
        make_fetcher(base_dir=images, max_bytes=10).fetch("a.png")


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("ftp://example.com/a.png", "unsupported URL scheme 'ftp'"),
        ("file://remote.example.com/a.png", "file URL on a remote host"),
    ],
)
def test_unsupported_refs(make_fetcher: Callable[..., ImageFetcher], ref: str, reason: str) -> None:
    with pytest.raises(FetchError, match=reason):
        make_fetcher().fetch(ref)


# --- fetch_many ------------------------------------------------------------------------------


def test_fetch_many_keeps_input_order_and_yields_errors(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher], tmp_path: Path
) -> None:
    (tmp_path / "local.png").write_bytes(PNG2)
    refs = [
        server.url("/delay/300"),  # finishes last, must still come first
        server.url("/missing"),
        server.url("/delay/10"),
        server.url("/text"),
        str(tmp_path / "local.png"),
        "ftp://example.com/x.png",
        server.url("/img.png"),
    ]
    results = list(make_fetcher(workers=4).fetch_many(refs))
    assert [ref for ref, _ in results] == refs
    kinds = [type(result).__name__ for _, result in results]
    assert kinds == [
        "FetchedImage",
        "FetchError",
        "FetchedImage",
        "ImageDecodeError",
        "FetchedImage",
        "FetchError",
        "FetchedImage",
    ]
    assert all(isinstance(result, FetchedImage | CatalensError) for _, result in results)


class CountingRefs:
    """The given refs, handed out lazily; ``pulled`` counts how many were taken."""

    def __init__(self, refs: Iterable[str]) -> None:
        self.pulled = 0
        self._refs = refs

    def __iter__(self) -> Iterator[str]:
        for ref in self._refs:
            self.pulled += 1
            yield ref


def test_fetch_many_bounds_look_ahead(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    refs = CountingRefs(server.url(f"/delay/{30 + n}") for n in range(12))
    results = make_fetcher(workers=8).fetch_many(refs, lookahead=3)
    first = next(results)
    assert isinstance(first[1], FetchedImage)
    assert refs.pulled == 3  # not the whole input
    rest = list(results)
    assert len(rest) == 11
    assert 1 < server.max_in_flight <= 3


def test_fetch_many_default_look_ahead_is_four_per_worker(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    refs = CountingRefs(server.url("/img.png") for _ in range(100))
    results = make_fetcher(workers=2).fetch_many(refs)
    next(results)
    assert refs.pulled == 8
    results.close()  # stopping early is clean: no error, nothing left running


def test_fetch_many_downloads_a_repeated_url_once(
    server: ImageServer, make_fetcher: Callable[..., ImageFetcher]
) -> None:
    url = server.url("/dup.png")
    results = list(make_fetcher(workers=4).fetch_many([url] * 6))
    fetched = [result for _, result in results]
    assert all(isinstance(result, FetchedImage) and result.data == PNG for result in fetched)
    assert server.hits["/dup.png"] == 1
    assert sum(not result.cached for result in fetched if isinstance(result, FetchedImage)) == 1


def test_fetch_many_rejects_zero_look_ahead(make_fetcher: Callable[..., ImageFetcher]) -> None:
    with pytest.raises(ValueError):
        next(make_fetcher().fetch_many(["a.png"], lookahead=0))


def test_caller_client_is_not_closed(server: ImageServer, tmp_path: Path) -> None:
    with httpx.Client() as client:
        with ImageFetcher(tmp_path / "c", client=client) as fetcher:
            assert fetcher.fetch(server.url("/img.png")).data == PNG
        assert not client.is_closed
