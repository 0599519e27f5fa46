"""The exception tree of catalens.

Every error raised on purpose by the library is a ``CatalensError``; the CLI prints its
message in one line and the HTTP API turns it into a 4xx/5xx JSON body. Nothing below the
CLI/API layers prints or exits.

    CatalensError
    ├── ConfigError                 bad settings or arguments (unknown model, store URL, ...)
    │   ├── AlreadyExistsError      a collection of that name exists already
    │   ├── NoSourceError           a sync of a collection that has no catalog source
    │   ├── MissingExtraError       an optional extra is not installed (``missing_extra``)
    │   └── TooManyRemovalsError    an ingest would remove more of the catalog than allowed
    ├── ImageError                  one image could not be used; names the file and why
    │   ├── ImageDecodeError        empty, truncated, corrupt, or not an image at all
    │   └── ImageTooLargeError      over the byte or pixel limit (decompression bomb)
    ├── FetchError                  a URL could not be downloaded (404, timeout, too big, ...)
    │   └── BlockedURLError         refused by the address guard (loopback, private, metadata)
    ├── BlockedPathError            a local file the caller may not make the server read
    ├── CatalogError                a catalog source cannot be read at all
    ├── ModelError                  a model cannot be loaded or run
    │   ├── ModelMismatchError      a collection used with a model other than its own
    │   └── NoTextTowerError        a text query for a model that only embeds images
    ├── StoreError                  the vector store cannot be opened or written
    ├── BusyError                   the server is at a limit of work in flight; try again later
    ├── CollectionNotFoundError     no collection of that name
    ├── ProductNotFoundError        no product of that id in the collection
    └── QueryNotFoundError          no kept query of that id (unknown or expired)
"""

from __future__ import annotations


class CatalensError(Exception):
    """Base class of every error catalens raises on purpose."""


class ConfigError(CatalensError):
    """Settings or arguments that cannot work."""


class AlreadyExistsError(ConfigError):
    """A collection of that name exists already."""


class TooManyRemovalsError(ConfigError):
    """An ingest or sync that would remove more than ``max_removed_share`` of a collection's
    products (a wrong column mapping, an upstream that suddenly lists nothing); nothing was
    changed. ``force_removals`` (CLI ``--force-removals``) accepts it."""

    def __init__(self, message: str, *, removed: int, known: int) -> None:
        super().__init__(message)
        self.removed = removed
        self.known = known


class ImageError(CatalensError):
    """An image that cannot be used. ``source`` names the file or URL, ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ImageDecodeError(ImageError):
    """Empty, truncated, corrupt, or not an image."""


class ImageTooLargeError(ImageError):
    """Over the configured byte or pixel limit."""


class FetchError(CatalensError):
    """A remote image could not be downloaded."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class BlockedURLError(FetchError):
    """A URL whose host resolves to an address the guard refuses."""


class BlockedPathError(CatalensError):
    """A local path named by a caller that may not make the server read its own files (an
    HTTP upsert naming a file outside ``api_local_image_dirs``)."""


class CatalogError(CatalensError):
    """A catalog source that cannot be read at all (missing file, unknown format, ...)."""


class ModelError(CatalensError):
    """A model that cannot be loaded or run."""


class ModelMismatchError(ModelError):
    """A collection opened with a model other than the one its vectors were made with."""


class NoTextTowerError(ModelError):
    """A text query (or text embedding) for a model that only embeds images."""


class StoreError(CatalensError):
    """A vector store that cannot be opened, read or written."""


class BusyError(CatalensError):
    """Too much of some work is in flight (image decoding, URL fetches): refused now rather
    than queued, so one kind of request cannot exhaust the server. ``retry_after``: seconds
    after which a retry may succeed."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CollectionNotFoundError(CatalensError):
    """No collection of that name."""


class ProductNotFoundError(CatalensError):
    """No product of that id."""


class QueryNotFoundError(CatalensError):
    """No kept query of that id: never issued, or past the retention time or count."""


class NoSourceError(ConfigError):
    """A sync of a collection that has no catalog source (its products came by upsert)."""


class MissingExtraError(ConfigError):
    """A feature whose optional extra is not installed; ``extra`` names it (``serve``, ...)."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


def missing_extra(extra: str, what: str, missing: str | None = None) -> MissingExtraError:
    """The one way to say an extra is missing: ``what`` needs it, ``missing`` is the module
    that failed to import, and the message ends with the install command."""
    cause = f" ({missing} is missing)" if missing else ""
    return MissingExtraError(
        f"{what} needs the {extra} extra{cause}: pip install 'catalens[{extra}]'", extra
    )
