"""A query image, safe by type: bytes, a ``TrustedPath``, a ``RemoteURL`` or a decoded image.

Plain ``str`` and ``Path`` are refused: the service cannot tell a user's string from an
operator's path. A ``RemoteURL`` is fetched only by ``QueryFetcher``, behind the address
guard; a ``TrustedPath`` (``service/trusted.py``) is read from disk, and only CLI and library code
can build one.
"""

from __future__ import annotations

import functools
import io
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from catalens import __version__
from catalens.embedders import Preprocessing
from catalens.errors import BlockedURLError, BusyError, ModelError
from catalens.ingest.decode import ImageLimits, PixelBudget, decode_image, read_image_file
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.http_deadline import deadline_client
from catalens.ingest.url_guard import AddressGuard
from catalens.refs import is_url
from catalens.service.trusted import TrustedPath
from catalens.settings import Settings

__all__ = [
    "QueryFetcher",
    "QueryImage",
    "RemoteURL",
    "check_query_image",
    "decode_query",
    "draft_size",
    "query_budget",
    "query_bytes",
    "query_limits",
]


@dataclass(frozen=True)
class RemoteURL:
    """An http(s) URL to search by: anyone may name one; only ``QueryFetcher`` fetches it."""

    url: str

    def __str__(self) -> str:
        return self.url


QueryImage = bytes | TrustedPath | RemoteURL | Image.Image


class QueryFetcher:
    """Downloads the image behind a ``RemoteURL``, behind the address guard.

    Loopback, private, link-local and metadata addresses are refused (after DNS resolution
    and on every redirect) unless their host is in ``CATALENS_URL_ALLOWLIST``. Each query gets
    a fresh, throw-away fetcher cache: nothing a user asked for is kept on disk.

    A fetch ends within ``url_fetch_timeout`` in all (connect, headers, body, retries and
    redirects), and at most ``url_fetch_concurrency`` run at once: past that, ``BusyError``
    at once, so slow hosts cannot hold every thread the server searches uploads on.
    """

    def __init__(self, settings: Settings) -> None:
        self._guard = AddressGuard(allow_hosts=frozenset(settings.url_allowlist))
        self._timeout = settings.url_fetch_timeout
        self._max_bytes = settings.max_upload_bytes
        self._slots = threading.BoundedSemaphore(settings.url_fetch_concurrency)
        self._client = deadline_client(
            timeout=settings.url_fetch_timeout,
            headers={"User-Agent": f"catalens/{__version__} (search by URL)"},
            max_connections=settings.url_fetch_concurrency,
        )
        self._lock = threading.Lock()
        self._root: Path | None = None

    def fetch(self, url: RemoteURL) -> bytes:
        """The bytes behind an http(s) URL; ``FetchError``/``BlockedURLError`` otherwise."""
        if not isinstance(url, RemoteURL):
            raise TypeError(f"QueryFetcher.fetch takes a RemoteURL, not {type(url).__name__}")
        if not is_url(url.url):
            raise BlockedURLError(url.url, "only http and https URLs can be searched by URL")
        if not self._slots.acquire(blocking=False):
            raise BusyError(
                "too many searches by URL are being fetched; try again shortly",
                retry_after=self._timeout,
            )
        try:
            return self._fetch(url)
        finally:
            self._slots.release()

    def _fetch(self, url: RemoteURL) -> bytes:
        with tempfile.TemporaryDirectory(dir=self._scratch()) as cache:
            fetcher = ImageFetcher(
                Path(cache),
                workers=1,
                timeout=self._timeout,
                retries=1,
                backoff=0.2,
                max_bytes=self._max_bytes,
                guard=self._guard,
                client=self._client,
                deadline=self._timeout,
            )
            with fetcher:
                return fetcher.fetch(url.url).data

    def _scratch(self) -> Path:
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="catalens-queries-"))
            return self._root

    def close(self) -> None:
        self._client.close()
        with self._lock:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None


def query_bytes(image: QueryImage, *, fetcher: QueryFetcher, max_bytes: int) -> bytes:
    """The bytes of a query image (a decoded image is encoded as PNG)."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, TrustedPath):
        return read_image_file(image.path, max_bytes=max_bytes)
    if isinstance(image, RemoteURL):
        return fetcher.fetch(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()
    raise _refused(image)


def decode_query(
    image: QueryImage,
    *,
    fetcher: QueryFetcher,
    limits: ImageLimits,
    draft_size: tuple[int, int] | None = None,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """A query image decoded to RGB (see ``CatalensService.decode_query``), at the size
    ``draft_size`` asks for where the format allows, within ``budget``."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    source = "query image" if isinstance(image, bytes) else str(image)
    data = query_bytes(image, fetcher=fetcher, max_bytes=limits.max_bytes)
    return decode_image(
        data, source=source, limits=limits, draft_size=draft_size, budget=budget, reduce=True
    )


def query_limits(settings: Settings) -> ImageLimits:
    """What a query photo may cost: the image limits, and at most ``max_query_pixels``
    decoded (anyone may send a query; catalog images come from the operator)."""
    return ImageLimits(
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        max_decode_pixels=min(settings.max_query_pixels, settings.max_image_pixels),
    )


def query_budget(settings: Settings) -> PixelBudget:
    """The one budget of query pixels being decoded at once (``decode_pixel_budget``)."""
    return PixelBudget(settings.decode_pixel_budget, wait=settings.decode_wait_seconds)


def check_query_image(image: object) -> None:
    """Refuse, before any work, what is not a ``QueryImage``."""
    if not isinstance(image, bytes | TrustedPath | RemoteURL | Image.Image):
        raise _refused(image)


def _refused(image: object) -> TypeError:
    kind = type(image).__name__
    return TypeError(
        f"a query image is bytes, a TrustedPath, a RemoteURL or a PIL image, not a {kind}: "
        "wrap a local path the caller vouches for in TrustedPath(...) and a URL in "
        "RemoteURL(...) (fetched behind the address guard)"
    )


def draft_size(
    preprocessings: Sequence[Mapping[str, Any]], zooms: Sequence[Sequence[float]]
) -> tuple[int, int] | None:
    """The JPEG draft size that serves every model (and its zoom views) a query goes to;
    ``None`` (decode in full) when a model's preprocessing is not known."""
    sizes = []
    for card, each in zip(preprocessings, zooms, strict=True):
        try:
            key = tuple(
                sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in card.items())
            )
            size = _draft_size(key, tuple(each))
        except TypeError:  # a value that cannot be a key: read the card each time
            size = _draft_size.__wrapped__(tuple(card.items()), tuple(each))
        if size is None:
            return None
        sizes.append(size)
    return max(sizes) if sizes else None


@functools.lru_cache(maxsize=64)
def _draft_size(
    card: tuple[tuple[str, Any], ...], zooms: tuple[float, ...]
) -> tuple[int, int] | None:
    """One model's draft size, by its card's items (cached: every query asks for it)."""
    try:
        return Preprocessing.from_card(dict(card)).draft_size(zooms)
    except (ModelError, KeyError):
        return None
