"""Image bytes from local paths and URLs, with downloads kept in a content-addressed cache.

Blobs live at ``cache_dir/blobs/<hash[:2]>/<hash>``; a sqlite index maps each URL to the hash
of what it served (and the ``ETag``/``Last-Modified`` it came with), so a URL is downloaded
once across runs. ``fetch(ref, revalidate=True)`` asks the server whether a cached URL still
holds the same bytes (a conditional GET: 304 keeps the cache, 200 replaces it; a server that
gives no validators is simply downloaded again). ``fetch_many`` runs a thread pool with
bounded look-ahead and yields results in input order, errors as values: one bad image never
stops an ingest run.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import httpx

from catalens import __version__
from catalens.errors import (
    BlockedURLError,
    CatalensError,
    FetchError,
    ImageTooLargeError,
)
from catalens.ingest.decode import check_image_bytes, content_hash, read_image_file
from catalens.ingest.http_deadline import deadline_client, seconds_left, within
from catalens.ingest.url_guard import AddressGuard
from catalens.ledger.url_index import UrlEntry, UrlIndex
from catalens.refs import is_url

__all__ = ["FetchedImage", "ImageFetcher"]

MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# httpx timeouts bound each read, not a request: a server dripping its headers or body one
# byte per (timeout - 1) seconds would hold a worker for days. So one fetch (every attempt,
# redirect and back-off) gets a total deadline, by default this many timeouts.
_TOTAL_TIME_FACTOR = 6
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")
_MAX_RETRY_AFTER = 30.0
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")


@dataclass(frozen=True)
class FetchedImage:
    """The bytes behind one image reference."""

    ref: str
    """The path or URL asked for."""
    data: bytes = field(repr=False)
    content_hash: str
    """sha256 hex of ``data``."""
    cached: bool
    """True when the bytes were not downloaded: a local file, or a cache hit (also one that a
    conditional request confirmed with 304 Not Modified)."""


class ImageFetcher:
    """Fetches image bytes for paths, ``file://`` and http(s) URLs. Thread-safe.

    Raises ``FetchError`` (HTTP errors, timeouts, ``BlockedURLError`` from ``guard``),
    ``ImageDecodeError`` (empty or not an image by its magic bytes), ``ImageTooLargeError``
    (over ``max_bytes``) and ``ImageError`` (a local file that cannot be read). Only transient
    failures are retried: timeouts, connection errors, HTTP 5xx and 429.
    """

    def __init__(
        self,
        cache_dir: Path,
        *,
        workers: int = 8,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_bytes: int = 25 * 1024 * 1024,
        guard: AddressGuard | None = None,
        client: httpx.Client | None = None,
        base_dir: Path | None = None,
        deadline: float | None = None,
    ) -> None:
        if workers < 1 or retries < 0 or timeout <= 0 or backoff < 0 or max_bytes < 1:
            raise ValueError(
                "workers and max_bytes must be >= 1, retries/backoff >= 0, timeout > 0"
            )
        if deadline is not None and deadline <= 0:
            raise ValueError("deadline must be > 0")
        self._deadline = deadline if deadline is not None else _TOTAL_TIME_FACTOR * timeout
        self._workers = workers
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_bytes = max_bytes
        self._guard = guard
        self._base_dir = base_dir
        self._blobs = Path(cache_dir) / "blobs"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._index = UrlIndex(Path(cache_dir) / "index.sqlite3")
        self._owns_client = client is None
        self._client = client or _own_client(timeout, max(2 * workers, 10), guarded=bool(guard))
        self._url_locks = _KeyedLocks()
        self._closing = threading.Event()

    def __enter__(self) -> ImageFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop retry back-offs, close the HTTP client (if we made it) and the index."""
        self._closing.set()
        if self._owns_client:
            self._client.close()
        self._index.close()

    def fetch(self, ref: str, *, revalidate: bool = False) -> FetchedImage:
        """The bytes of one image reference; see the class docstring for the errors.

        With ``revalidate``, a URL found in the cache is checked with the server (a
        conditional GET with the stored ``ETag``/``Last-Modified``, else a plain download)
        instead of being trusted; callers waiting on the same URL share one check.
        Ignored for local files, which are always read afresh.
        """
        self.check_ref(ref)
        path = self.local_path(ref)
        if path is None:
            return self._fetch_url(ref, revalidate=revalidate)
        return self._fetch_local(ref, path)

    def local_path(self, ref: str) -> Path | None:
        """The file ``fetch(ref)`` reads, ``None`` for an http(s) URL; ``FetchError`` for a
        ref it cannot fetch (another URL scheme, a ``file:`` URL on a remote host)."""
        if is_url(ref):
            return None
        if ref[:5].lower() == "file:":
            return _file_url_path(ref)
        scheme = _URL_SCHEME.match(ref)
        if scheme is not None:
            raise FetchError(ref, f"unsupported URL scheme {scheme.group(1)!r}")
        path = Path(ref)
        if not path.is_absolute() and self._base_dir is not None:
            path = self._base_dir / path
        return path

    def check_ref(self, ref: str) -> None:
        """Raise when this fetcher refuses ``ref`` whatever is behind it, before anything is
        read or even looked at, so the refusal says nothing about what exists. This fetcher
        refuses no ref up front; a confined one refuses paths outside its directories."""

    def fetch_many(
        self, refs: Iterable[str], *, lookahead: int | None = None, revalidate: bool = False
    ) -> Generator[tuple[str, FetchedImage | CatalensError], None, None]:
        """``(ref, result)`` for each ref, in input order; failures are yielded, not raised.

        At most ``lookahead`` (default ``4 * workers``) refs are in flight at once, so a huge
        or endless ``refs`` iterable is consumed only as fast as results are taken. Closing
        the generator early cancels what has not started and waits for what has.
        """
        window = 4 * self._workers if lookahead is None else lookahead
        if window < 1:
            raise ValueError("lookahead must be >= 1")
        pending: deque[tuple[str, Future[FetchedImage | CatalensError]]] = deque()
        pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="catalens-fetch")
        try:
            for ref in refs:
                pending.append((ref, pool.submit(self._fetch_as_value, ref, revalidate)))
                if len(pending) >= window:
                    head, future = pending.popleft()
                    yield head, future.result()
            while pending:
                head, future = pending.popleft()
                yield head, future.result()
        finally:
            # Reached early when the consumer stops iterating: drop what has not started.
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch_as_value(self, ref: str, revalidate: bool) -> FetchedImage | CatalensError:
        try:
            return self.fetch(ref, revalidate=revalidate)
        except CatalensError as exc:
            return exc

    def _fetch_local(self, ref: str, path: Path) -> FetchedImage:
        data = read_image_file(path, max_bytes=self._max_bytes, source=ref)
        check_image_bytes(data, source=ref, max_bytes=self._max_bytes)
        return FetchedImage(ref=ref, data=data, content_hash=content_hash(data), cached=True)

    def _fetch_url(self, ref: str, *, revalidate: bool) -> FetchedImage:
        asked = time.time()
        # One download per URL at a time: catalogs often repeat an image across products, and
        # the second caller should find the first one's blob instead of downloading it again.
        with self._url_locks.hold(ref):
            cached = self._cached(ref)
            conditional: dict[str, str] = {}
            if cached is not None:
                image, entry = cached
                # Checked (or downloaded) while this caller waited for the lock: fresh enough.
                if not revalidate or entry.checked_at >= asked:
                    return image
                conditional = entry.conditional_headers()
            body = self._download(ref, conditional)
            if body is None:  # 304 Not Modified
                self._index.touch(ref)
                assert cached is not None  # a 304 without validators is a FetchError
                return cached[0]
            check_image_bytes(body.data, source=ref, max_bytes=self._max_bytes)
            digest = content_hash(body.data)
            self._write_blob(digest, body.data)
            self._index.put(ref, digest, etag=body.etag, last_modified=body.last_modified)
            return FetchedImage(ref=ref, data=body.data, content_hash=digest, cached=False)

    def _cached(self, ref: str) -> tuple[FetchedImage, UrlEntry] | None:
        entry = self._index.get(ref)
        if entry is None:
            return None
        try:
            data = self._blob_path(entry.digest).read_bytes()
        except FileNotFoundError:
            data = b""
        # A blob lost or damaged (crash mid-write, disk trouble) is simply fetched again.
        if content_hash(data) != entry.digest:
            self._index.forget(ref)
            return None
        check_image_bytes(data, source=ref, max_bytes=self._max_bytes)
        return FetchedImage(ref=ref, data=data, content_hash=entry.digest, cached=True), entry

    def _blob_path(self, digest: str) -> Path:
        return self._blobs / digest[:2] / digest

    def _write_blob(self, digest: str, data: bytes) -> None:
        final = self._blob_path(digest)
        if final.exists():
            return  # content-addressed: the same bytes are already there
        final.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary name in the same directory, then an atomic rename: readers see
        # either no blob or the whole blob, even with several writers of the same hash.
        tmp = final.with_name(f".{digest}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def _download(self, ref: str, conditional: Mapping[str, str]) -> _Body | None:
        """The body and its validators, or None when a conditional request got 304."""
        try:
            url = httpx.URL(ref)
        except httpx.InvalidURL as exc:
            raise FetchError(ref, f"invalid URL ({exc})") from exc
        # One deadline for the whole fetch: every hop, attempt, back-off and socket read.
        with within(time.monotonic() + self._deadline):
            for hop in range(MAX_REDIRECTS + 1):
                address = self._check_target(ref, url, redirected=hop > 0)
                outcome = self._get_with_retries(ref, url, address, conditional)
                if outcome is _NOT_MODIFIED:
                    return None
                if isinstance(outcome, _Body):
                    return outcome
                assert isinstance(outcome, httpx.URL)
                url = outcome
        raise FetchError(ref, f"too many redirects (more than {MAX_REDIRECTS})")

    def _check_target(self, ref: str, url: httpx.URL, *, redirected: bool) -> str | None:
        """The vetted address to connect to (``None``: connect by name)."""
        where = f"redirected to {url}: " if redirected else ""
        if url.scheme not in ("http", "https"):
            raise FetchError(ref, f"{where}unsupported URL scheme {url.scheme!r}")
        if not url.host:
            raise FetchError(ref, f"{where}URL has no host")
        if self._guard is None:
            return None
        try:
            return self._guard.check_url(str(url))
        except BlockedURLError as exc:
            raise BlockedURLError(ref, where + exc.reason) from exc
        except FetchError as exc:
            raise FetchError(ref, where + exc.reason) from exc

    def _get_with_retries(
        self, ref: str, url: httpx.URL, address: str | None, conditional: Mapping[str, str]
    ) -> _Outcome:
        attempt = 0
        while True:
            try:
                return self._get_once(ref, url, address, conditional)
            except _Transient as exc:
                attempt += 1
                tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
                if attempt > self._retries:
                    raise FetchError(ref, f"{exc.reason} ({tries})") from exc
                delay = self._backoff * 2 ** (attempt - 1)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, _MAX_RETRY_AFTER))
                if delay >= (seconds_left() or 0.0):
                    total = f"{self._deadline:g} s in all"
                    raise FetchError(ref, f"{exc.reason} ({tries}, {total})") from exc
                if self._closing.wait(delay):
                    raise FetchError(ref, "fetcher closed") from exc

    def _get_once(
        self, ref: str, url: httpx.URL, address: str | None, conditional: Mapping[str, str]
    ) -> _Outcome:
        """The body, the next URL for a redirect, or ``_NOT_MODIFIED`` (a 304 answering
        ``conditional`` headers); ``_Transient`` for what may be retried. With an
        ``address``, the connection goes to it, not to whatever the name resolves to now."""
        left = seconds_left()
        if left is not None and left <= 0:
            raise _Transient(f"timed out ({self._deadline:g} s in all)")
        deadline = time.monotonic() + (self._deadline if left is None else left)
        target, headers, extensions = _pinned(url, address, conditional)
        try:
            with self._client.stream(
                "GET",
                target,
                headers=headers,
                extensions=extensions,
                # Also bounds the wait for a pooled connection, which no socket sees.
                timeout=self._timeout if left is None else min(self._timeout, left),
                follow_redirects=False,
            ) as response:
                status = response.status_code
                if status == 304:
                    if not conditional:
                        raise FetchError(ref, "HTTP 304 to a request that was not conditional")
                    return _NOT_MODIFIED
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError(ref, f"HTTP {status} redirect without a Location")
                    return url.join(location)  # the named URL, not the pinned address
                if status == 429 or status >= 500:
                    raise _Transient(f"HTTP {status}", _retry_after(response))
                if not 200 <= status < 300:
                    raise FetchError(ref, f"HTTP {status}")
                return _Body(
                    self._read_body(ref, response, deadline),
                    etag=response.headers.get("etag"),
                    last_modified=response.headers.get("last-modified"),
                )
        except httpx.TimeoutException as exc:
            raise _Transient("timed out") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise _Transient(f"connection failed ({exc or type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise FetchError(ref, f"request failed ({exc or type(exc).__name__})") from exc
        except httpx.InvalidURL as exc:
            raise FetchError(ref, f"invalid URL ({exc})") from exc

    def _read_body(self, ref: str, response: httpx.Response, deadline: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise ImageTooLargeError(
                ref, f"Content-Length {declared} bytes is over the limit of {self._max_bytes} bytes"
            )
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self._max_bytes:
                raise ImageTooLargeError(ref, f"body is over the limit of {self._max_bytes} bytes")
            if time.monotonic() > deadline:
                raise _Transient("timed out (download too slow)")
        return bytes(body)


def _own_client(timeout: float, connections: int, *, guarded: bool) -> httpx.Client:
    """A client whose requests keep the fetch's total deadline. An operator's fetcher under
    an HTTP proxy from the environment keeps the plain client that honours it, with the
    deadline checked between body chunks only; a guarded fetcher never uses a proxy."""
    agent = {"User-Agent": f"catalens/{__version__}"}
    if not guarded and any(
        os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARIABLES
    ):
        limits = httpx.Limits(max_connections=connections)
        return httpx.Client(timeout=timeout, follow_redirects=False, headers=agent, limits=limits)
    return deadline_client(timeout=timeout, headers=agent, max_connections=connections)


def _pinned(
    url: httpx.URL, address: str | None, headers: Mapping[str, str]
) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request to send so that it reaches ``address`` while naming ``url``'s host: the
    URL with the address as its host, the original ``Host`` header, and the host as the TLS
    server name (SNI and certificate check)."""
    if address is None or address == url.host:
        return url, dict(headers), {}
    host = url.netloc.decode("ascii")  # host[:port] as written, what Host must say
    return (
        url.copy_with(host=address),
        {**headers, "Host": host},
        {"sni_hostname": url.host} if url.scheme == "https" else {},
    )


@dataclass(frozen=True)
class _Body:
    """A downloaded body and the validators that came with it."""

    data: bytes = field(repr=False)
    etag: str | None = None
    last_modified: str | None = None


class _NotModified:
    """A 304 answer to a conditional request."""


_NOT_MODIFIED = _NotModified()
_Outcome = _Body | _NotModified | httpx.URL


class _Transient(Exception):
    """A failure worth retrying; internal to the retry loop."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    # Only the delta-seconds form; an HTTP-date falls back to our own back-off.
    return float(value) if value.isdigit() else None


def _file_url_path(ref: str) -> Path:
    parts = urlsplit(ref)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(ref, f"file URL on a remote host {parts.netloc!r}")
    return Path(url2pathname(parts.path))


class _KeyedLocks:
    """One lock per key, existing only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(key) or (threading.Lock(), 0)
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)
