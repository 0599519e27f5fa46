"""Reading every page of a JSON HTTP list endpoint: page, offset, cursor, Link header or auto.

Used by ``RestSource``. Nothing is ever cut short silently: more pages than ``max_pages``,
fewer items than the announced total, a page that repeats the previous one, or a cursor seen
before all raise ``CatalogError``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from catalens.catalog.link_header import next_link
from catalens.errors import CatalogError

PAGINATIONS = ("auto", "none", "page", "offset", "cursor", "link")

_META_HOLDERS = ("meta", "pagination", "pageInfo", "page_info", "paging", "data")
_TOTAL = ("total", "totalCount", "total_count", "totalItems", "total_items", "totalDocs")
_TOTAL_PAGES = ("totalPages", "total_pages", "pageCount", "page_count", "lastPage", "last_page")
_HAS_MORE = ("hasMore", "has_more", "hasNextPage", "has_next_page", "hasNext", "has_next")
_CURSOR = ("nextCursor", "next_cursor", "nextPageToken", "next_page_token", "next_page_url", "next")
_LIMIT = ("limit", "pageSize", "page_size", "perPage", "per_page")
_PAGE = ("page", "currentPage", "current_page")
_OFFSET = ("offset", "skip")
_SNIPPET = 200
_DEFAULT_PORTS = {"http": 80, "https": 443}

Extract = Callable[[object, str], list[object]]
"""``extract(body, page_url)``: the items of one response, or ``CatalogError``."""


@dataclass(frozen=True)
class PagingOptions:
    mode: str = "auto"
    page_param: str = "page"
    first_page: int = 1
    limit_param: str = "limit"
    limit: int | None = 100
    offset_param: str = "offset"
    cursor_param: str = "cursor"
    cursor_field: str | None = None
    retries: int = 2
    backoff: float = 0.5
    max_pages: int = 100_000
    max_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True)
class ScopedHeaders:
    """Headers that carry a secret (a source's credential or token), sent only to the URLs
    ``scope`` covers: the same scheme, host and port as one of its URL prefixes, and a path
    under that one's. Every page and every redirect hop is checked on its own, so a next
    link or a redirect to another origin never gets them (httpx drops only ``Authorization``
    on a cross-origin redirect, and keeps every other header)."""

    headers: Mapping[str, str]
    scope: tuple[str, ...]

    @classmethod
    def for_origin(cls, headers: Mapping[str, str], url: str) -> ScopedHeaders:
        """Headers for ``url``'s origin (scheme, host and port) only, any path on it."""
        parts = urlsplit(url)
        return cls(dict(headers), (f"{parts.scheme}://{parts.netloc}/",))

    def covers(self, url: str | httpx.URL) -> bool:
        target = _place(url)
        for prefix in self.scope:
            allowed = _place(prefix)
            if target[:3] == allowed[:3] and target[3].startswith(allowed[3]):
                return True
        return False

    def apply(self, headers: httpx.Headers, url: httpx.URL) -> None:
        """Set these headers on a request to ``url`` if the scope covers it, else remove
        them (a redirect carries the previous hop's headers)."""
        for name in self.headers:
            headers.pop(name, None)
        if self.covers(url):
            headers.update(self.headers)


def _place(url: str | httpx.URL) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) as compared for a scope: lower-cased, default ports
    filled in, an empty path read as ``/``."""
    parsed = httpx.URL(str(url))
    port = parsed.port or _DEFAULT_PORTS.get(parsed.scheme)
    return parsed.scheme, parsed.host, port, urlsplit(str(parsed)).path or "/"


@dataclass(frozen=True)
class _Meta:
    """What one response says about the pages around it (None: it does not say)."""

    total: int | None
    total_pages: int | None
    has_more: bool | None
    cursor: str | None
    limit: int | None
    page: int | None
    offset: int | None

    @classmethod
    def read(cls, body: object, cursor_field: str | None) -> _Meta:
        holders: list[Mapping[str, Any]] = []
        if isinstance(body, dict):
            holders.append(body)
            holders.extend(body[k] for k in _META_HOLDERS if isinstance(body.get(k), dict))

        def find(names: tuple[str, ...], kind: type) -> Any:
            for holder in holders:
                for name in names:
                    value = holder.get(name)
                    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
                        return value
            return None

        cursor: str | None = None
        for holder in holders:
            for name in (cursor_field,) if cursor_field else _CURSOR:
                value = holder.get(name)
                number = isinstance(value, int) and not isinstance(value, bool)
                if (isinstance(value, str) and value) or (number and name != "next"):
                    cursor = str(value)
                    break
            if cursor is not None:
                break
        return cls(
            total=find(_TOTAL, int),
            total_pages=find(_TOTAL_PAGES, int),
            has_more=find(_HAS_MORE, bool),
            cursor=cursor,
            limit=find(_LIMIT, int),
            page=find(_PAGE, int),
            offset=find(_OFFSET, int),
        )

    @property
    def paged(self) -> bool:
        facts = (self.total, self.total_pages, self.has_more, self.page)
        return any(fact is not None for fact in facts)


class Pager:
    """Walks the pages of ``url`` and yields ``(item, page_url)`` for every item.

    Redirects are followed here, hop by hop, so that each hop gets the ``scoped`` headers
    only when their scope covers it.
    """

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        options: PagingOptions,
        *,
        headers: Mapping[str, str],
        timeout: float,
        extract: Extract,
        scoped: Sequence[ScopedHeaders] = (),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._url = httpx.URL(url)
        self._options = options
        self._headers = dict(headers)
        self._timeout = timeout
        self._extract = extract
        self._scoped = tuple(scoped)
        self._sleep = sleep

    def items(self) -> Iterator[tuple[object, str]]:
        opts = self._options
        mode = opts.mode
        limit = opts.limit if mode in ("page", "offset", "cursor") else None
        page, offset = opts.first_page, 0
        request = self._first_request(mode)
        pages = count = 0
        total: int | None = None
        previous: list[object] | None = None
        cursors: set[str] = set()
        links: set[httpx.URL] = set()
        while True:
            pages += 1
            if pages > opts.max_pages:
                raise CatalogError(
                    f"REST catalog {self._url}: more than {opts.max_pages} pages; raise the "
                    "max_pages option if the catalog is really that large"
                )
            body, link = self._get_json(request)
            where = str(request)
            items = self._extract(body, where)
            meta = _Meta.read(body, opts.cursor_field)
            if items and items == previous:
                if previous is not None and limit is not None and len(previous) < limit:
                    break  # a short page served again: the backend ignores paging
                raise CatalogError(
                    f"REST catalog {where}: page {pages} repeats page {pages - 1}; does the "
                    f"backend honour the {self._param_name(mode)!r} parameter?"
                )
            for item in items:
                yield item, where
            count += len(items)
            total = meta.total if meta.total is not None else total
            if mode == "auto" and link is not None:
                mode, limit = "link", None  # RFC 8288 paging: the server names each next page
            elif mode == "auto":
                mode, limit = self._detect(meta)
                page = meta.page if meta.page is not None else opts.first_page
                offset = meta.offset or 0
            elif meta.limit is not None and mode in ("page", "offset"):
                limit = meta.limit
            previous = items
            if mode == "cursor":
                nxt = self._next_cursor(request, meta, cursors, limit)
            elif mode == "link":
                nxt = link
                links.add(request)
                if nxt is not None and nxt in links:
                    raise CatalogError(
                        f"REST catalog {where}: the Link header points back to {nxt}, an "
                        "earlier page"
                    )
            elif mode in ("page", "offset"):
                nxt = None
                if self._more(meta, items, count, pages, limit):
                    page, offset = page + 1, offset + len(items)
                    nxt = self._numbered(mode, page, offset, limit)
            else:
                nxt = None
            if nxt is None:
                break
            request = nxt
        if total is not None and count < total:
            raise CatalogError(
                f"REST catalog {self._url}: the backend reported {total} items but only "
                f"{count} arrived in {pages} page(s); refusing a partial catalog"
            )

    # -- the next request ----------------------------------------------------------------

    def _first_request(self, mode: str) -> httpx.URL:
        opts = self._options
        if mode == "page":
            return self._numbered(mode, opts.first_page, 0, opts.limit)
        if mode == "offset":
            return self._numbered(mode, opts.first_page, 0, opts.limit)
        if mode in ("cursor", "link") and opts.limit is not None:
            return self._url.copy_merge_params({opts.limit_param: opts.limit})
        return self._url

    def _numbered(self, mode: str, page: int, offset: int, limit: int | None) -> httpx.URL:
        opts = self._options
        params: dict[str, int] = (
            {opts.page_param: page} if mode == "page" else {opts.offset_param: offset}
        )
        if limit is not None:
            params[opts.limit_param] = limit
        return self._url.copy_merge_params(params)

    @staticmethod
    def _detect(meta: _Meta) -> tuple[str, int | None]:
        """Auto mode, after the first response: how (and whether) to go on."""
        if meta.cursor is not None:
            return "cursor", None
        if meta.paged:
            return ("offset" if meta.offset is not None else "page"), meta.limit
        return "none", None

    @staticmethod
    def _more(meta: _Meta, items: list[object], count: int, pages: int, limit: int | None) -> bool:
        if not items:
            return False
        if meta.total is not None:
            return count < meta.total
        if meta.total_pages is not None:
            return pages < meta.total_pages
        if meta.has_more is not None:
            return meta.has_more
        # No facts: a page shorter than the limit the backend says it used is the last;
        # otherwise ask once more (an empty or repeated page then ends it).
        return not (meta.limit is not None and len(items) < meta.limit)

    def _next_cursor(
        self, request: httpx.URL, meta: _Meta, seen: set[str], limit: int | None
    ) -> httpx.URL | None:
        if meta.has_more is False or not meta.cursor:
            return None
        if meta.cursor in seen:
            raise CatalogError(
                f"REST catalog {request}: the backend sent cursor {meta.cursor[:60]!r} twice"
            )
        seen.add(meta.cursor)
        if meta.cursor.startswith(("http://", "https://", "/", "?")):
            return request.join(meta.cursor)  # a link to the next page
        params: dict[str, str | int] = {self._options.cursor_param: meta.cursor}
        if limit is not None:
            params[self._options.limit_param] = limit
        return self._url.copy_merge_params(params)

    def _param_name(self, mode: str) -> str:
        opts = self._options
        return {"offset": opts.offset_param, "cursor": opts.cursor_param}.get(mode, opts.page_param)

    # -- HTTP ----------------------------------------------------------------------------

    def _get_json(self, url: httpx.URL) -> tuple[object, httpx.URL | None]:
        """The JSON body of ``url`` and the next page its ``Link`` header names, if any."""
        attempt = 0
        while True:
            try:
                return self._get_once(url)
            except _Transient as exc:
                attempt += 1
                if attempt > self._options.retries:
                    tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
                    raise CatalogError(f"REST catalog {url}: {exc.reason} ({tries})") from exc
                self._sleep(self._options.backoff * 2 ** (attempt - 1))

    def _get_once(self, url: httpx.URL) -> tuple[object, httpx.URL | None]:
        where = f"REST catalog {url}"
        try:
            with contextlib.closing(self._send(url)) as response:
                status = response.status_code
                if status == 429 or status >= 500:
                    raise _Transient(f"HTTP {status}")
                body = self._read(where, response)
                # Relative targets resolve against the URL answered (after any redirect).
                link = next_link(response.headers.get_list("link"), response.url)
        except httpx.TimeoutException as exc:
            raise _Transient("timed out") from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient(f"connection failed ({exc or type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise CatalogError(f"{where}: request failed ({exc or type(exc).__name__})") from exc
        if not 200 <= status < 300:
            text = " ".join(body[:_SNIPPET].decode("utf-8", "replace").split())
            raise CatalogError(f"{where}: HTTP {status}" + (f" ({text})" if text else ""))
        try:
            return json.loads(body), link
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise CatalogError(f"{where}: the response is not valid JSON ({reason})") from exc

    def _send(self, url: httpx.URL) -> httpx.Response:
        """The streamed response to GET ``url``, after following its redirects."""
        client = self._client
        request = client.build_request("GET", url, headers=self._headers, timeout=self._timeout)
        for _ in range(client.max_redirects + 1):
            for scoped in self._scoped:
                scoped.apply(request.headers, request.url)
            response = client.send(request, stream=True, follow_redirects=False)
            if response.next_request is None:
                return response
            response.close()
            request = response.next_request
        raise httpx.TooManyRedirects(f"more than {client.max_redirects} redirects", request=request)

    def _read(self, where: str, response: httpx.Response) -> bytes:
        cap = self._options.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise CatalogError(f"{where}: response of {declared} bytes is over max_bytes={cap}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > cap:
                raise CatalogError(f"{where}: response is over max_bytes={cap} bytes")
        return bytes(body)


class _Transient(Exception):
    """A failure worth retrying."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
