"""REST catalogs: products read from a shop backend's JSON HTTP API (seed 000's ``GET /medicines``).

Every page is read before a single product is handed on, so a backend that fails half-way
(HTTP error, timeout, invalid JSON, fewer items than the total it announced) raises
``CatalogError`` and the ingest that was reading it changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx

from catalens import __version__
from catalens.catalog.image_refs import merge_refs
from catalens.catalog.mapping import (
    ID_NAMES,
    IMAGE_NAMES,
    ColumnMapping,
    SeenIds,
    check_max_images,
    normalize_name,
    row_matches,
)
from catalens.catalog.records import (
    Outcome,
    count_outcome,
    no_images_reason,
    present_names,
    record_fields,
)
from catalens.catalog.rest_paging import PAGINATIONS, Pager, PagingOptions, ScopedHeaders
from catalens.errors import CatalogError
from catalens.types import Product, ValidationReport

__all__ = ["RestSource", "ScopedHeaders"]

# Compared after ``normalize_name`` (so ``_id``, ``imageUrl`` and ``image-url`` all work).
REST_ID_NAMES = ("id", "_id", "uuid", *ID_NAMES[1:])
REST_IMAGE_NAMES = ("images", "image", "imageurl", "image_url", "imageurls", "image_urls")
_MORE_IMAGE_NAMES = IMAGE_NAMES | {"imageurl", "imageurls", "imagelink"}
IMAGE_URL_FIELDS = ("url", "src", "path", "href", "uri")
_ITEM_FIELDS = ("data", "items", "results", "medicines", "products", "docs")
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
_NEVER_IN_URL = frozenset('"{}<>\\^`|\r\n\t\x00')

_OPTION_NAMES = frozenset(
    {
        "items_field",
        "pagination",
        "page_param",
        "first_page",
        "limit_param",
        "limit",
        "offset_param",
        "cursor_param",
        "cursor_field",
        "headers",
        "auth_header",
        "auth_scheme",
        "auth_token_env",
        "timeout",
        "retries",
        "backoff",
        "max_pages",
        "max_bytes",
    }
)


class _Auto:
    """``items_field`` not given: look for the usual names."""


AUTO = _Auto()


@dataclass(frozen=True)
class _Settings:
    items_field: str | _Auto | None
    paging: PagingOptions
    headers: dict[str, str]
    token_headers: dict[str, str]
    """The ``auth_token_env`` token's header: sent to the source's own origin only."""
    timeout: float


class RestSource:
    """Products from a JSON HTTP backend, every page of it; bad items go to ``report``.

    ``url`` is the list endpoint (``http://shop:3000/medicines``). ``options`` (all optional,
    stored in the collection's source config):

    - ``items_field``: where the list of items is in a response: a field name or a dotted
      path (``data.items``); ``null``/``""`` when the body itself is the list. Default: the
      body when it is a list, else the first list among ``data``, ``items``, ``results``,
      ``medicines``, ``products`` (also looked for inside an object under ``data``).
    - ``pagination``: ``none``, ``page`` (``page_param``/``limit_param``), ``offset``
      (``offset_param``/``limit_param``), ``cursor`` (``cursor_param``, the next cursor read
      from ``cursor_field``; a cursor that is a URL is followed as a link), ``link`` (the
      RFC 8288 ``Link: <url>; rel="next"`` response header, as Shopify pages) or ``auto``
      (the default: the first request is the URL as given; a response with a ``rel="next"``
      Link header is followed as link pages, one whose body carries a next cursor or link
      as cursor pages, one with ``total``/``totalPages``/``hasMore``/
      ``page`` as numbered pages; otherwise it is the whole catalog).
    - ``page_param`` (``page``), ``first_page`` (1), ``limit_param`` (``limit``), ``limit``
      (100; ``null`` sends none), ``offset_param`` (``offset``), ``cursor_param``
      (``cursor``), ``cursor_field`` (default: ``nextCursor``, ``next_cursor``, ``next``).
      Pagination facts are read from the body or from a ``meta``/``pagination``/``pageInfo``
      object in it.
    - ``headers``: extra request headers, e.g. ``{"X-Tenant": "shop1"}``.
    - ``auth_token_env``: the name of an environment variable holding a token, sent in
      ``auth_header`` (``Authorization``) after ``auth_scheme`` (``Bearer`` for the
      Authorization header, none otherwise): the secret stays out of ``collection.json``,
      and goes only to the URL's own origin (scheme, host and port), never to a next page
      or a redirect elsewhere.
    - ``timeout`` (30 s per request), ``retries`` (2, on HTTP 5xx/429, timeouts and
      connection errors, with ``backoff`` 0.5 s doubling), ``max_pages`` (100000) and
      ``max_bytes`` (100 MB per response): going past either is an error, never a silent cut.

    Each item is a JSON object. ``mapping`` names the id, title and image fields; by default
    the id is ``id``/``_id``/``uuid`` (or ``product_id``, ``sku``, ...), the title
    ``title``/``name``, and the images every one of ``images``/``image``/``imageUrl``/
    ``image_url`` present. An image entry is a URL string or an object with a
    ``url``/``src``/``path``/``href`` field; relative URLs are resolved against the page
    URL. Every field but the id and the title is kept as metadata, nested values included
    (image fields too, as the backend sent them, so seed 000's clients get them back).

    ``credential``: headers carrying the operator's secret, sent only to the URLs its scope
    covers (every page and every redirect hop is checked).

    Items that cannot be products go to ``report.rejected`` with ``line`` = the item's
    1-based position across all pages. Unreadable backends raise ``CatalogError`` naming the
    URL and why. The backend is configured by the operator, so it is not subject to the
    address guard that protects search-by-URL.
    """

    def __init__(
        self,
        url: str,
        *,
        mapping: ColumnMapping | None = None,
        options: Mapping[str, Any] | None = None,
        max_images_per_product: int = 10,
        where: Mapping[str, str] | None = None,
        client: httpx.Client | None = None,
        environ: Mapping[str, str] | None = None,
        credential: ScopedHeaders | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            raise CatalogError(f"REST catalog {url!r} is not an http(s) URL")
        self._url = url
        self._mapping = mapping
        self._max_images = check_max_images(max_images_per_product)
        self._where = dict(where or {})
        self._client = client
        self._settings = _parse_options(
            url, options or {}, os.environ if environ is None else environ
        )
        self._scoped = [credential] if credential is not None else []
        if self._settings.token_headers:
            self._scoped.append(ScopedHeaders.for_origin(self._settings.token_headers, url))
        self._report = ValidationReport(source=url)

    @property
    def url(self) -> str:
        return self._url

    @property
    def report(self) -> ValidationReport:
        return self._report

    def __iter__(self) -> Iterator[Product]:
        self._report = ValidationReport(source=self._url)
        return self._products(self._report)

    def _products(self, report: ValidationReport) -> Iterator[Product]:
        # Every page first: a failure on the last page must not leave a partial catalog.
        items = self._read_all()
        seen = SeenIds()
        for line, (item, page_url) in enumerate(items, start=1):
            report.rows += 1
            if isinstance(item, dict) and not row_matches(item, self._where):
                report.skipped += 1
                continue
            outcome = self._product(item, page_url, seen)
            product = count_outcome(report, seen, line, f"as item {line}", outcome)
            if product is not None:
                yield product

    def _read_all(self) -> list[tuple[object, str]]:
        settings = self._settings
        client = self._client or httpx.Client(
            timeout=settings.timeout,
            follow_redirects=True,
            headers={"User-Agent": f"catalens/{__version__}", "Accept": "application/json"},
        )
        try:
            pager = Pager(
                client,
                self._url,
                settings.paging,
                headers=settings.headers,
                timeout=settings.timeout,
                extract=self._extract_items,
                scoped=self._scoped,
            )
            return list(pager.items())
        finally:
            if self._client is None:
                client.close()

    def _extract_items(self, body: object, page_url: str) -> list[object]:
        """The item list of one response; ``CatalogError`` when there is none."""
        field_path = self._settings.items_field
        if isinstance(body, list):
            if isinstance(field_path, str):
                raise CatalogError(
                    f"REST catalog {page_url}: expected an object with {field_path!r}, "
                    "found a JSON array (set items_field to null when the body is the list)"
                )
            return body
        if not isinstance(body, dict):
            raise CatalogError(
                f"REST catalog {page_url}: expected a JSON array or object, "
                f"found {type(body).__name__}"
            )
        if field_path is None:
            raise CatalogError(
                f"REST catalog {page_url}: expected a JSON array (items_field is null), "
                "found an object"
            )
        if isinstance(field_path, str):
            value: object = body
            for part in field_path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if not isinstance(value, list):
                raise CatalogError(
                    f"REST catalog {page_url}: no list at {field_path!r} in the response"
                )
            return value
        found = _auto_items(body)
        if found is None:
            raise CatalogError(
                f"REST catalog {page_url}: cannot find the item list in the response (looked "
                f"for {', '.join(_ITEM_FIELDS)}; set the items_field option); fields: "
                f"{', '.join(list(body)[:12])}"
            )
        return found

    # -- items -> products ---------------------------------------------------------------

    def _product(self, item: object, page_url: str, seen: SeenIds) -> Outcome:
        if not isinstance(item, dict):
            return None, f"expected a JSON object, found {_kind(item)}", []
        record: dict[str, Any] = item
        fields = record_fields(
            record, self._mapping, id_names=REST_ID_NAMES, id_hint="id, _id or uuid"
        )
        if isinstance(fields, str):
            return None, fields, []
        id_key, title_key = fields.id_key, fields.title_key
        title_value = record.get(title_key) if title_key else None
        if isinstance(title_value, bool) or (
            title_value is not None and not isinstance(title_value, str | int | float)
        ):
            return None, f"title {title_key!r} must be a string", []
        image_keys = self._image_keys(list(record), id_key)
        repairs: list[str] = []
        groups: list[list[str]] = []
        for key in image_keys:
            try:
                refs = _image_refs(record[key], page_url, repairs)
            except ValueError as exc:
                return None, f"{key}: {exc}", []
            groups.append(refs)
        images = merge_refs(groups, limit=self._max_images)
        if not images:
            return None, no_images_reason(image_keys), []
        product_id = fields.product_id
        duplicate = seen.duplicate(product_id)
        if duplicate:
            return None, duplicate, []
        title = str(title_value).strip() if title_value is not None else ""
        metadata = {k: v for k, v in record.items() if k not in (id_key, title_key)}
        return Product(product_id, title or product_id, images, metadata), "", repairs

    def _image_keys(self, keys: Sequence[str], id_key: str) -> list[str]:
        mapping = self._mapping
        if mapping and mapping.images:
            return present_names(keys, mapping.images)
        ordered = [k for name in REST_IMAGE_NAMES for k in keys if normalize_name(k) == name]
        others = [k for k in keys if normalize_name(k) in _MORE_IMAGE_NAMES and k != id_key]
        return list(dict.fromkeys([*ordered, *others]))


def _auto_items(body: Mapping[str, object]) -> list[object] | None:
    for holder in (body, body.get("data")):
        if not isinstance(holder, dict):
            continue
        for name in _ITEM_FIELDS:
            value = holder.get(name)
            if isinstance(value, list):
                return value
    return None


def _image_refs(value: object, base: str, repairs: list[str]) -> list[str]:
    """The URLs in one image field: a string, an object, or a list of either."""
    entries: list[object] = value if isinstance(value, list) else [value]
    refs: list[str] = []
    for number, entry in enumerate(entries, start=1):
        where = f"entry {number}" if isinstance(value, list) else "value"
        if isinstance(entry, dict):
            url_key = next((k for k in IMAGE_URL_FIELDS if isinstance(entry.get(k), str)), None)
            if url_key is None:
                raise ValueError(
                    f"{where} is an object without a {'/'.join(IMAGE_URL_FIELDS)} field"
                )
            entry = entry[url_key]
        if entry is None:
            continue
        if not isinstance(entry, str):
            raise ValueError(f"{where} is {_kind(entry)}, not a URL")
        ref = entry.strip()
        if not ref:
            continue
        refs.append(_resolve(ref, base, where, repairs))
    return refs


def _resolve(ref: str, base: str, where: str, repairs: list[str]) -> str:
    if any(c in _NEVER_IN_URL for c in ref):
        raise ValueError(f"{where} {ref[:60]!r} is not a URL")
    joined = urljoin(base, ref)
    if joined != ref:
        repairs.append("relative image URL")
    quoted = quote(joined, safe=_URL_SAFE)
    if quoted != joined:
        repairs.append("unescaped characters in an image URL")
    parts = urlsplit(quoted)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{where} {ref[:60]!r} is not an http(s) URL")
    return quoted


def _kind(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "a list" if isinstance(value, list) else "an object")


# -- options -------------------------------------------------------------------------------


class _Options:
    """Reads and checks the ``options`` mapping; every problem is a ``CatalogError``."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise CatalogError(
                f"unknown REST source option(s) {', '.join(unknown)} for {url}; accepted: "
                f"{', '.join(sorted(_OPTION_NAMES))}"
            )
        self._options = options

    def text(self, name: str, default: str) -> str:
        value = self._options.get(name, default)
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(f"REST source option {name} must be a non-empty string")
        return value.strip()

    def number(self, name: str, default: float, *, minimum: float) -> float:
        value = self._options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise CatalogError(f"REST source option {name} must be a number >= {minimum}")
        return float(value)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self._options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CatalogError(f"REST source option {name} must be an integer >= {minimum}")
        return value

    def optional_name(self, name: str) -> str | None:
        value = self._options.get(name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise CatalogError(f"REST source option {name} must be a field name")
        return value.strip() if value else None

    def items_field(self) -> str | _Auto | None:
        if "items_field" not in self._options:
            return AUTO
        value = self._options["items_field"]
        if value is not None and not isinstance(value, str):
            raise CatalogError("REST source option items_field must be a field name or null")
        return (value.strip() or None) if value else None

    def paging(self) -> PagingOptions:
        mode = self._options.get("pagination", "auto")
        if mode not in PAGINATIONS:
            raise CatalogError(
                f"REST source option pagination must be one of {', '.join(PAGINATIONS)}, "
                f"got {mode!r}"
            )
        no_limit = self._options.get("limit", 100) is None
        return PagingOptions(
            mode=mode,
            page_param=self.text("page_param", "page"),
            first_page=self.integer("first_page", 1, minimum=0),
            limit_param=self.text("limit_param", "limit"),
            limit=None if no_limit else self.integer("limit", 100, minimum=1),
            offset_param=self.text("offset_param", "offset"),
            cursor_param=self.text("cursor_param", "cursor"),
            cursor_field=self.optional_name("cursor_field"),
            retries=self.integer("retries", 2, minimum=0),
            backoff=self.number("backoff", 0.5, minimum=0),
            max_pages=self.integer("max_pages", 100_000, minimum=1),
            max_bytes=self.integer("max_bytes", 100 * 1024 * 1024, minimum=1),
        )

    def headers(self) -> dict[str, str]:
        raw = self._options.get("headers") or {}
        if not isinstance(raw, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise CatalogError("REST source option headers must map header names to strings")
        return dict(raw)

    def token_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The ``auth_token_env`` token's header, or none."""
        env_name = self.optional_name("auth_token_env")
        if env_name is None:
            return {}
        token = environ.get(env_name, "")
        if not token:
            raise CatalogError(
                f"the REST source's token variable {env_name} is not set in the environment"
            )
        header = self.text("auth_header", "Authorization")
        default_scheme = "Bearer" if header.lower() == "authorization" else ""
        scheme = self._options.get("auth_scheme", default_scheme)
        if not isinstance(scheme, str):
            raise CatalogError("REST source option auth_scheme must be a string")
        return {header: f"{scheme.strip()} {token}" if scheme.strip() else token}


def _parse_options(url: str, options: Mapping[str, Any], environ: Mapping[str, str]) -> _Settings:
    reader = _Options(url, options)
    return _Settings(
        items_field=reader.items_field(),
        paging=reader.paging(),
        headers=reader.headers(),
        token_headers=reader.token_headers(environ),
        timeout=reader.number("timeout", 30.0, minimum=0.001),
    )
