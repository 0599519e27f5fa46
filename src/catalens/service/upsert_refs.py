"""What an untrusted caller (the HTTP API) may make the server read: the image refs of an
upsert, and a catalog source named over HTTP with the images its catalog names.

http(s) URLs are fetched behind the address guard, like a search by URL; a local path (or a
``file:`` URL) is read only when it lies, symlinks followed, under a directory the operator
named in ``CATALENS_API_LOCAL_IMAGE_DIRS``. An upsert naming any other path is refused
before any product is written; a catalog image outside them fails (``BlockedPathError``)
when the ``ConfinedFetcher`` is asked for it, so a write route cannot make the server read
its own files.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from catalens.errors import BlockedPathError
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.url_guard import AddressGuard
from catalens.refs import is_url
from catalens.settings import Settings
from catalens.types import Product

__all__ = [
    "ConfinedFetcher",
    "address_guard",
    "check_local_path",
    "check_upsert_refs",
    "guarded_fetcher",
    "local_path",
]

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def check_upsert_refs(products: Sequence[Product], allowed_dirs: Sequence[Path]) -> None:
    """Raise ``BlockedPathError`` for the first local image ref outside ``allowed_dirs``."""
    for product in products:
        for ref in product.images:
            path = local_path(ref)
            if path is not None:  # a URL: the guarded fetcher fetches (or refuses) it
                check_local_path(path, allowed_dirs, what=f"product {product.id!r}: image {ref!r}")


def check_local_path(
    path: Path,
    allowed_dirs: Sequence[Path],
    *,
    what: str,
    hint: str = "give an http(s) URL",
) -> None:
    """Raise ``BlockedPathError`` unless ``path`` (resolved, symlinks followed) lies under
    one of ``allowed_dirs``; ``what`` names it in the message, ``hint`` says what to do."""
    roots = [directory.resolve() for directory in allowed_dirs]
    try:
        resolved: Path | None = path.resolve()
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        resolved = None
    if resolved is None or not any(resolved.is_relative_to(root) for root in roots):
        where = ", ".join(str(root) for root in roots) or "none is set"
        raise BlockedPathError(
            f"{what} is a local file outside the directories the HTTP API may name "
            f"(CATALENS_API_LOCAL_IMAGE_DIRS: {where}); {hint}"
        )


def local_path(ref: str) -> Path | None:
    """The file a ref names when the fetcher would read it from disk, else ``None``."""
    if is_url(ref):
        return None
    if ref[:5].lower() == "file:":
        parts = urlsplit(ref)
        return Path(url2pathname(parts.path))
    if _URL_SCHEME.match(ref):
        return None  # other schemes: the fetcher refuses them as unsupported
    return Path(ref)


class ConfinedFetcher(ImageFetcher):
    """An ``ImageFetcher`` that reads a local file only under ``allowed_dirs`` (checked on
    every fetch, so a symlink changed since the upsert or the last sync is seen); anything
    else is a ``BlockedPathError``, which an ingest records as a failed image. The check
    (``check_ref``) comes before the file is looked at, so a refused path's error is the same
    whether it exists or not."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        allowed_dirs: Sequence[Path],
        guard: AddressGuard,
        workers: int,
        timeout: float,
        retries: int,
        max_bytes: int,
    ) -> None:
        super().__init__(
            cache_dir,
            workers=workers,
            timeout=timeout,
            retries=retries,
            max_bytes=max_bytes,
            guard=guard,
        )
        self.allowed_dirs = tuple(allowed_dirs)

    def check_ref(self, ref: str) -> None:
        path = self.local_path(ref)  # the file ``fetch`` would read, exactly
        if path is not None:
            check_local_path(path, self.allowed_dirs, what=f"image {ref!r}")


def address_guard(settings: Settings) -> AddressGuard:
    """The address guard with the operator's ``CATALENS_URL_ALLOWLIST``."""
    return AddressGuard(allow_hosts=frozenset(settings.url_allowlist))


def guarded_fetcher(settings: Settings) -> ConfinedFetcher:
    """The fetcher of untrusted image refs: the address guard on, local files only under
    ``api_local_image_dirs``, and its own download cache (a URL the operator's catalog
    fetched unguarded is not served from it)."""
    return ConfinedFetcher(
        settings.cache_dir / "upserts",
        allowed_dirs=settings.api_local_image_dirs,
        workers=settings.download_workers,
        timeout=settings.download_timeout,
        retries=settings.download_retries,
        max_bytes=settings.max_image_bytes,
        guard=address_guard(settings),
    )
