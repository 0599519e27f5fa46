"""ImageFetcher.fetch(revalidate=True): conditional GETs against a real loopback server."""

from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from catalens.errors import FetchError
from catalens.ingest.decode import content_hash
from catalens.ingest.fetch import ImageFetcher


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, "PNG")
    return buffer.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))
LAST_MODIFIED = "Wed, 01 May 2024 10:00:00 GMT"


@dataclass
class Resource:
    body: bytes
    etag: bool = True
    last_modified: bool = False
    status: int = 200
    requests: list[dict[str, str]] = field(default_factory=list)


class Server:
    """Serves ``resources[path]``, honouring If-None-Match / If-Modified-Since."""

    def __init__(self) -> None:
        self.resources: dict[str, Resource] = {}
        self.gate = threading.Event()
        self.gate.set()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.gate.wait(5)
                res = outer.resources[self.path]
                with lock:
                    res.requests.append(
                        {k: v for k, v in self.headers.items() if k.lower().startswith("if-")}
                    )
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(res)

            def _answer(self, res: Resource) -> None:
                if res.status != 200:
                    self.send_response(res.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                tag = f'"{hashlib.sha256(res.body).hexdigest()[:16]}"'
                fresh = (res.etag and self.headers.get("If-None-Match") == tag) or (
                    res.last_modified and self.headers.get("If-Modified-Since") == LAST_MODIFIED
                )
                self.send_response(304 if fresh else 200)
                if res.etag:
                    self.send_header("ETag", tag)
                if res.last_modified:
                    self.send_header("Last-Modified", LAST_MODIFIED)
                self.send_header("Content-Length", "0" if fresh else str(len(res.body)))
                self.end_headers()
                if not fresh:
                    self.wfile.write(res.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,))
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def red(server: Server) -> tuple[Resource, str]:
    """``/a.png`` serving RED: the resource and its URL."""
    res = server.resources["/a.png"] = Resource(RED)
    return res, server.url("/a.png")


@pytest.fixture
def make_fetcher(tmp_path: Path) -> Iterator[Callable[[], ImageFetcher]]:
    made: list[ImageFetcher] = []

    def make() -> ImageFetcher:
        made.append(ImageFetcher(tmp_path / "cache", backoff=0.01, timeout=2.0, retries=1))
        return made[-1]

    yield make
    for fetcher in made:
        fetcher.close()


def test_etag_304_keeps_the_cache_and_200_replaces_it(
    red: tuple[Resource, str], make_fetcher: Callable[[], ImageFetcher]
) -> None:
    res, url = red
    fetcher = make_fetcher()
    assert not fetcher.fetch(url).cached
    assert fetcher.fetch(url).cached  # plain fetch: the cache is trusted, no request
    assert len(res.requests) == 1

    same = fetcher.fetch(url, revalidate=True)
    assert same.cached and same.data == RED
    assert res.requests[-1] == {"If-None-Match": f'"{hashlib.sha256(RED).hexdigest()[:16]}"'}

    res.body = BLUE  # same URL, new bytes, new ETag
    changed = fetcher.fetch(url, revalidate=True)
    assert not changed.cached and changed.data == BLUE
    assert changed.content_hash == content_hash(BLUE)
    assert fetcher.fetch(url).data == BLUE
    again = make_fetcher().fetch(url, revalidate=True)  # validators survive a restart
    assert again.cached and again.data == BLUE
    assert len(res.requests) == 4


def test_last_modified_and_no_validators(
    server: Server, make_fetcher: Callable[[], ImageFetcher]
) -> None:
    dated = server.resources["/d.png"] = Resource(RED, etag=False, last_modified=True)
    bare = server.resources["/b.png"] = Resource(RED, etag=False)
    fetcher = make_fetcher()
    for path in ("/d.png", "/b.png"):
        fetcher.fetch(server.url(path))
    assert fetcher.fetch(server.url("/d.png"), revalidate=True).cached
    assert dated.requests[-1] == {"If-Modified-Since": LAST_MODIFIED}

    # No validators: downloaded again, unconditionally; the hash tells whether it changed.
    first = fetcher.fetch(server.url("/b.png"), revalidate=True)
    assert not first.cached and first.content_hash == content_hash(RED)
    bare.body = BLUE
    second = fetcher.fetch(server.url("/b.png"), revalidate=True)
    assert second.content_hash == content_hash(BLUE)
    assert bare.requests == [{}, {}, {}]


def test_callers_waiting_on_one_url_share_one_check(
    server: Server, red: tuple[Resource, str], make_fetcher: Callable[[], ImageFetcher]
) -> None:
    res, url = red
    fetcher = make_fetcher()
    fetcher.fetch(url)
    server.gate.clear()  # hold the first check until every caller is queued behind it
    opener = threading.Timer(0.3, server.gate.set)
    opener.start()
    results = list(fetcher.fetch_many([url] * 4, revalidate=True))
    opener.join()
    assert all(not isinstance(r, Exception) and r.data == RED for _, r in results)
    assert len(res.requests) == 2  # the download, then one check shared by all four


def test_revalidation_failures_raise_and_keep_the_cache(
    red: tuple[Resource, str], make_fetcher: Callable[[], ImageFetcher]
) -> None:
    res, url = red
    fetcher = make_fetcher()
    fetcher.fetch(url)
    res.status = 404
    with pytest.raises(FetchError, match="HTTP 404"):
        fetcher.fetch(url, revalidate=True)
    assert fetcher.fetch(url).data == RED


def test_unsolicited_304_is_an_error(
    server: Server, make_fetcher: Callable[[], ImageFetcher]
) -> None:
    server.resources["/x.png"] = Resource(b"", status=304)
    with pytest.raises(FetchError, match="304 to a request that was not conditional"):
        make_fetcher().fetch(server.url("/x.png"))


def test_an_old_index_is_migrated(
    red: tuple[Resource, str], make_fetcher: Callable[[], ImageFetcher], tmp_path: Path
) -> None:
    res, url = red
    digest = content_hash(RED)
    cache = tmp_path / "cache"
    (cache / "blobs" / digest[:2]).mkdir(parents=True)
    (cache / "blobs" / digest[:2] / digest).write_bytes(RED)
    old = sqlite3.connect(cache / "index.sqlite3")
    old.execute(
        "CREATE TABLE url_blobs (url TEXT PRIMARY KEY, hash TEXT NOT NULL, fetched_at REAL)"
    )
    old.execute("INSERT INTO url_blobs VALUES (?, ?, 0)", (url, digest))
    old.commit()
    old.close()

    fetcher = make_fetcher()
    assert fetcher.fetch(url).cached
    assert res.requests == []
    # No validators were stored before the migration: downloaded, then known by ETag.
    assert not fetcher.fetch(url, revalidate=True).cached
    assert fetcher.fetch(url, revalidate=True).cached
    assert res.requests[-1].keys() == {"If-None-Match"}
    fetcher.close()
    db = sqlite3.connect(cache / "index.sqlite3")
    columns = {row[1] for row in db.execute("PRAGMA table_info(url_blobs)")}
    assert {"etag", "last_modified"} <= columns
    assert db.execute("PRAGMA user_version").fetchone() == (1,)
    db.close()
