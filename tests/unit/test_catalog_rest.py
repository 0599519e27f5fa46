"""RestSource: seed 000's ``GET /medicines`` and the usual pagination styles.

Most tests answer through ``httpx.MockTransport`` (no socket at all); the ones about real
HTTP behaviour (timeouts, refused connections, ``open_catalog`` end to end) use a
ThreadingHTTPServer on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from catalens.catalog import ColumnMapping, RestSource, detect_format, open_catalog
from catalens.errors import CatalogError

BASE = "http://shop.test:3000"
URL = f"{BASE}/medicines"
Handler = Callable[[httpx.Request], httpx.Response]


def medicine(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"m{n}",
        "name": f"Medicine {n}",
        "nameBn": f"ঔষধ {n}",
        "brand": "Napa",
        "images": [f"{BASE}/uploads/m{n}.png"],
        **extra,
    }


class Backend:
    """A mock transport that records every request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)

    def params(self) -> list[dict[str, str]]:
        return [dict(r.url.params) for r in self.requests]

    def source(self, url: str = URL, **options: Any) -> RestSource:
        options.setdefault("backoff", 0)
        mapping = options.pop("mapping", None)
        where = options.pop("where", None)
        client = httpx.Client(transport=httpx.MockTransport(self))
        return RestSource(url, mapping=mapping, options=options, where=where, client=client)


def paged(items: list[dict[str, Any]], request: httpx.Request, **meta: Any) -> httpx.Response:
    page = int(request.url.params.get("page", "1"))
    limit = int(request.url.params.get("limit", "10"))
    chunk = items[(page - 1) * limit : page * limit]
    return httpx.Response(200, json={"data": chunk, "total": len(items), **meta})


# --- seed 000's shape ------------------------------------------------------------------------


def test_seed_000_list_of_medicines() -> None:
    body = [
        medicine(1),
        {
            "_id": "64f0c0ffee",
            "name": "Paracetamol",
            "nameBn": "প্যারাসিটামল",
            "brand": "Napa",
            "images": [{"url": "/uploads/para.png", "alt": "box"}, "side view.png"],
            "price": {"amount": 12.5, "currency": "BDT"},
        },
    ]
    backend = Backend(lambda request: httpx.Response(200, json=body))
    source = backend.source()
    products = list(source)
    assert [p.id for p in products] == ["m1", "64f0c0ffee"]
    para = products[1]
    assert para.title == "Paracetamol"
    assert para.images == (f"{BASE}/uploads/para.png", f"{BASE}/side%20view.png")
    assert para.metadata == {
        "nameBn": "প্যারাসিটামল",
        "brand": "Napa",
        "images": body[1]["images"],  # kept as the backend sent them
        "price": {"amount": 12.5, "currency": "BDT"},
    }
    assert source.report.products == 2 and source.report.rows == 2
    assert source.report.rejected == []
    assert [r.line for r in source.report.repaired] == [2]
    assert [str(r.url) for r in backend.requests] == [URL]  # auto: the URL as given, once


def test_auto_detects_the_item_list() -> None:
    for body in (
        {"items": [medicine(1)]},
        {"results": [medicine(1)], "next": None},
        {"medicines": [medicine(1)]},
        {"products": [medicine(1)]},
        {"docs": [medicine(1)], "totalDocs": 1, "page": 1, "totalPages": 1},
        {"data": {"items": [medicine(1)]}},
    ):
        backend = Backend(lambda request, body=body: httpx.Response(200, json=body))
        assert [p.id for p in backend.source()] == ["m1"], body


def test_items_field_option() -> None:
    body = {"payload": {"rows": [medicine(1)]}, "data": "not this"}
    backend = Backend(lambda request: httpx.Response(200, json=body))
    assert [p.id for p in backend.source(items_field="payload.rows")] == ["m1"]
    with pytest.raises(CatalogError, match=r"cannot find the item list.*fields: payload, data"):
        list(backend.source())
    with pytest.raises(CatalogError, match=r"no list at 'payload\.nope'"):
        list(backend.source(items_field="payload.nope"))
    with pytest.raises(CatalogError, match=r"expected a JSON array \(items_field is null\)"):
        list(backend.source(items_field=None))
    as_list = Backend(lambda request: httpx.Response(200, json=[medicine(1)]))
    assert [p.id for p in as_list.source(items_field="")] == ["m1"]
    with pytest.raises(CatalogError, match="found a JSON array"):
        list(as_list.source(items_field="data"))


# --- pagination ------------------------------------------------------------------------------


def test_page_pagination_reads_every_page() -> None:
    items = [medicine(n) for n in range(1, 9)]
    backend = Backend(lambda request: paged(items, request))
    source = backend.source(pagination="page", limit=3)
    assert [p.id for p in source] == [f"m{n}" for n in range(1, 9)]
    assert backend.params() == [
        {"page": "1", "limit": "3"},
        {"page": "2", "limit": "3"},
        {"page": "3", "limit": "3"},
    ]


def test_page_pagination_custom_names_and_existing_query() -> None:
    items = [medicine(n) for n in range(1, 6)]

    def handler(request: httpx.Request) -> httpx.Response:
        p = request.url.params
        assert p["status"] == "active"
        start = int(p["p"]) * int(p["size"])
        return httpx.Response(200, json=items[start : start + int(p["size"])])

    backend = Backend(handler)
    source = backend.source(
        f"{URL}?status=active",
        pagination="page",
        page_param="p",
        first_page=0,
        limit_param="size",
        limit=2,
    )
    assert [p.id for p in source] == [f"m{n}" for n in range(1, 6)]
    # No total in a bare list: a short page is followed by one more request, found empty.
    assert [q["p"] for q in backend.params()] == ["0", "1", "2", "3"]


def test_a_backend_that_ignores_paging_is_read_once() -> None:
    body = [medicine(1), medicine(2)]
    backend = Backend(lambda request: httpx.Response(200, json=body))
    assert [p.id for p in backend.source(pagination="page", limit=10)] == ["m1", "m2"]
    assert len(backend.requests) == 2  # the probe for page 2 got page 1 again


def test_a_full_page_served_again_is_an_error() -> None:
    body = [medicine(1), medicine(2)]
    backend = Backend(lambda request: httpx.Response(200, json=body))
    with pytest.raises(CatalogError, match=r"page 2 repeats page 1.*'page' parameter"):
        list(backend.source(pagination="page", limit=2))


def test_fewer_items_than_the_reported_total_is_an_error() -> None:
    items = [medicine(n) for n in range(1, 9)]

    def handler(request: httpx.Request) -> httpx.Response:
        response = paged(items, request)
        if request.url.params["page"] == "3":
            return httpx.Response(200, json={"data": [], "total": 8})
        return response

    backend = Backend(handler)
    with pytest.raises(CatalogError, match=r"reported 8 items but only 6 arrived in 3 page"):
        list(backend.source(pagination="page", limit=3))


def test_server_capping_the_limit_is_followed_by_total() -> None:
    items = [medicine(n) for n in range(1, 8)]

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])  # asked for 100, the server gives 3
        return httpx.Response(200, json={"data": items[(page - 1) * 3 : page * 3], "total": 7})

    backend = Backend(handler)
    assert len(list(backend.source(pagination="page"))) == 7
    assert [q["page"] for q in backend.params()] == ["1", "2", "3"]


def test_auto_follows_nestjs_meta_with_the_servers_page_size() -> None:
    items = [medicine(n) for n in range(1, 6)]

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        limit = int(request.url.params.get("limit", "2"))
        meta = {"total": 5, "page": page, "limit": limit, "totalPages": 3}
        chunk = items[(page - 1) * limit : page * limit]
        return httpx.Response(200, json={"data": chunk, "meta": meta})

    backend = Backend(handler)
    assert [p.id for p in backend.source()] == [f"m{n}" for n in range(1, 6)]
    assert backend.params() == [{}, {"page": "2", "limit": "2"}, {"page": "3", "limit": "2"}]


def test_offset_pagination() -> None:
    items = [medicine(n) for n in range(1, 6)]

    def handler(request: httpx.Request) -> httpx.Response:
        skip, take = int(request.url.params["skip"]), int(request.url.params["take"])
        return httpx.Response(
            200, json={"items": items[skip : skip + take], "hasMore": skip + take < 5}
        )

    backend = Backend(handler)
    source = backend.source(pagination="offset", offset_param="skip", limit_param="take", limit=2)
    assert [p.id for p in source] == [f"m{n}" for n in range(1, 6)]
    assert [q["skip"] for q in backend.params()] == ["0", "2", "4"]


def test_cursor_pagination() -> None:
    items = [medicine(n) for n in range(1, 6)]

    def handler(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("after", "0"))
        nxt = str(start + 2) if start + 2 < 5 else None
        return httpx.Response(200, json={"data": items[start : start + 2], "next_cursor": nxt})

    backend = Backend(handler)
    source = backend.source(pagination="cursor", cursor_param="after", limit=2)
    assert [p.id for p in source] == [f"m{n}" for n in range(1, 6)]
    assert backend.params() == [
        {"limit": "2"},
        {"after": "2", "limit": "2"},
        {"after": "4", "limit": "2"},
    ]
    # auto mode finds the cursor by itself
    auto = Backend(handler)
    assert len(list(auto.source(cursor_param="after"))) == 5


def test_next_links_are_followed() -> None:
    items = [medicine(n) for n in range(1, 6)]

    def handler(request: httpx.Request) -> httpx.Response:
        page = int(request.url.params.get("page", "1"))
        nxt = f"/medicines?page={page + 1}" if page < 3 else None
        return httpx.Response(
            200, json={"count": 5, "next": nxt, "results": items[(page - 1) * 2 : page * 2]}
        )

    backend = Backend(handler)
    assert len(list(backend.source())) == 5
    assert [str(r.url) for r in backend.requests][1:] == [f"{URL}?page=2", f"{URL}?page=3"]


def test_a_repeated_cursor_is_an_error() -> None:
    counter = iter(range(1, 100))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [medicine(next(counter))], "nextCursor": "abc"})

    with pytest.raises(CatalogError, match="cursor 'abc' twice"):
        list(Backend(handler).source())
    same = Backend(lambda request: httpx.Response(200, json={"data": [medicine(1)], "next": "x"}))
    with pytest.raises(CatalogError, match=r"page 2 repeats page 1.*'cursor' parameter"):
        list(same.source())


def test_max_pages_is_an_error_not_a_cut() -> None:
    items = [medicine(n) for n in range(1, 9)]
    backend = Backend(lambda request: paged(items, request))
    with pytest.raises(CatalogError, match="more than 2 pages"):
        list(backend.source(pagination="page", limit=3, max_pages=2))


def test_pagination_none_reads_one_response() -> None:
    backend = Backend(lambda request: paged([medicine(n) for n in range(1, 4)], request))
    with pytest.raises(CatalogError, match="reported 3 items but only 1"):
        list(backend.source(f"{URL}?limit=1", pagination="none"))
    assert len(backend.requests) == 1


# --- items -----------------------------------------------------------------------------------


def test_invalid_items_are_rejected_with_their_position_across_pages() -> None:
    items: list[Any] = [
        medicine(1),
        "not an object",
        {"name": "no id", "images": ["a.png"]},
        medicine(4, images=[]),
        medicine(5, images=[{"alt": "no url"}]),
        medicine(6, images=[42]),
        medicine(1),  # duplicate id
        medicine(8, images=["ftp://x/y.png"]),
        medicine(9, id=True),
        medicine(10, name={"en": "x"}),
        medicine(11, images=None, imageUrl="/one.png"),
    ]
    backend = Backend(lambda request: paged(items, request))
    source = backend.source(pagination="page", limit=4)
    assert [p.id for p in source] == ["m1", "m11"]
    reasons = {r.line: r.reason for r in source.report.rejected}
    assert reasons == {
        2: "expected a JSON object, found a string",
        3: "no product id field (id, _id or uuid)",
        4: "no images ('images' missing or empty)",
        5: "images: entry 1 is an object without a url/src/path/href/uri field",
        6: "images: entry 1 is a number, not a URL",
        7: "duplicate product id m1, first seen as item 1",
        8: "images: entry 1 'ftp://x/y.png' is not an http(s) URL",
        9: "product id 'id' must be a string or an integer",
        10: "title 'name' must be a string",
    }
    assert source.report.rows == 11 and source.report.products == 2


def test_mapping_where_and_image_limit() -> None:
    items = [
        {"sku": 7, "label": "Seven", "pics": ["/a.png", "/b.png", "/c.png"], "kind": "tab"},
        {"sku": 8, "label": "Eight", "pics": "/d.png", "kind": "syrup"},
    ]
    backend = Backend(lambda request: httpx.Response(200, json=items))
    source = RestSource(
        URL,
        mapping=ColumnMapping(id="sku", title="label", images=("pics",)),
        options={},
        max_images_per_product=2,
        where={"kind": "tab"},
        client=httpx.Client(transport=httpx.MockTransport(backend)),
    )
    (product,) = list(source)
    assert (product.id, product.title) == ("7", "Seven")
    assert product.images == (f"{BASE}/a.png", f"{BASE}/b.png")
    assert product.metadata == {"pics": items[0]["pics"], "kind": "tab"}
    assert source.report.skipped == 1


# --- options and auth ------------------------------------------------------------------------


def test_headers_and_token_from_the_environment() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer s3cret":
            return httpx.Response(401, json={"message": "Unauthorized"})
        assert request.headers["x-tenant"] == "shop1"
        return httpx.Response(200, json=[medicine(1)])

    backend = Backend(handler)
    client = httpx.Client(transport=httpx.MockTransport(backend))
    options = {"headers": {"X-Tenant": "shop1"}, "auth_token_env": "SHOP_TOKEN"}
    source = RestSource(URL, options=options, client=client, environ={"SHOP_TOKEN": "s3cret"})
    assert [p.id for p in source] == ["m1"]
    with pytest.raises(CatalogError, match="token variable SHOP_TOKEN is not set"):
        RestSource(URL, options=options, client=client, environ={})
    wrong = RestSource(URL, options=options, client=client, environ={"SHOP_TOKEN": "nope"})
    with pytest.raises(CatalogError, match=r"medicines: HTTP 401 \(\{\"message\":"):
        list(wrong)
    custom = {"auth_token_env": "T", "auth_header": "X-Api-Key"}
    source = RestSource(URL, options=custom, client=client, environ={"T": "k"})
    assert source._settings.token_headers == {"X-Api-Key": "k"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"paging": "page"}, "unknown REST source option"),
        ({"pagination": "pages"}, "pagination must be one of auto, none, page"),
        ({"limit": 0}, "limit must be an integer >= 1"),
        ({"limit": "10"}, "limit must be an integer"),
        ({"timeout": -1}, "timeout must be a number"),
        ({"headers": {"X": 1}}, "headers must map header names to strings"),
        ({"items_field": 3}, "items_field must be a field name or null"),
    ],
)
def test_bad_options_fail_early(options: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        RestSource(URL, options=options)


def test_not_an_http_url() -> None:
    with pytest.raises(CatalogError, match="is not an http"):
        RestSource("ftp://shop/medicines")


# --- HTTP failures ---------------------------------------------------------------------------


def test_server_errors_are_retried_then_reported() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] <= 2:
            return httpx.Response(503)
        return httpx.Response(200, json=[medicine(1)])

    assert [p.id for p in Backend(flaky).source()] == ["m1"]
    dead = Backend(lambda request: httpx.Response(500, text="boom"))
    with pytest.raises(CatalogError) as info:
        list(dead.source(pagination="page", limit=5))
    assert str(info.value) == f"REST catalog {URL}?page=1&limit=5: HTTP 500 (3 attempts)"
    assert len(dead.requests) == 3


def test_invalid_json_and_wrong_shape() -> None:
    broken = Backend(lambda request: httpx.Response(200, text="<html>oops</html>"))
    with pytest.raises(CatalogError, match=rf"{URL}: the response is not valid JSON"):
        list(broken.source())
    scalar = Backend(lambda request: httpx.Response(200, json=42))
    with pytest.raises(CatalogError, match="expected a JSON array or object, found int"):
        list(scalar.source())


def test_response_size_cap() -> None:
    backend = Backend(lambda request: httpx.Response(200, json=[medicine(1)] * 50))
    with pytest.raises(CatalogError, match="over max_bytes=1000"):
        list(backend.source(max_bytes=1000))


def test_timeout_and_transport_errors() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    backend = Backend(timeout)
    with pytest.raises(CatalogError, match=r"timed out \(2 attempts\)"):
        list(backend.source(retries=1))

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(CatalogError, match=r"connection failed \(refused\) \(3 attempts\)"):
        list(Backend(refused).source())


# --- real loopback server and open_catalog ---------------------------------------------------


class LoopbackBackend:
    def __init__(self, body: object, delay: float = 0.0) -> None:
        self.stop = threading.Event()
        payload = json.dumps(body).encode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.stop.wait(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/medicines"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,))
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def loopback() -> Iterator[Callable[..., LoopbackBackend]]:
    made: list[LoopbackBackend] = []

    def make(body: object, delay: float = 0.0) -> LoopbackBackend:
        made.append(LoopbackBackend(body, delay))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_open_catalog_reads_a_real_backend(loopback: Callable[..., LoopbackBackend]) -> None:
    server = loopback({"data": [medicine(1), medicine(2)], "total": 2, "page": 1})
    assert detect_format(server.url) == "rest"
    source = open_catalog(server.url, options={"pagination": "none"})
    assert isinstance(source, RestSource)
    assert [p.id for p in source] == ["m1", "m2"]
    explicit = open_catalog(server.url, format="rest", mapping=ColumnMapping(id="name"))
    assert [p.id for p in explicit] == ["Medicine 1", "Medicine 2"]


def test_real_timeout_and_refused_connection(loopback: Callable[..., LoopbackBackend]) -> None:
    server = loopback([medicine(1)], delay=2.0)
    started = time.monotonic()
    with pytest.raises(CatalogError, match=r"timed out \(2 attempts\)"):
        list(open_catalog(server.url, options={"timeout": 0.2, "retries": 1, "backoff": 0}))
    assert time.monotonic() - started < 1.5
    url = server.url
    server.close()
    with pytest.raises(CatalogError, match=rf"{url}: connection failed"):
        list(open_catalog(url, options={"retries": 0}))


def test_file_formats_refuse_rest_options(tmp_path: Any) -> None:
    path = tmp_path / "c.csv"
    path.write_text("id,image\n1,a.jpg\n")
    with pytest.raises(CatalogError, match=r"options \(limit\) do not apply to the CSV"):
        open_catalog(path, options={"limit": 5})


# --- RFC 8288 Link header paging (Shopify's REST Admin API), on a real loopback server ---------


class LinkPagedBackend:
    """Three pages of ``{"products": [...]}`` chained by ``Link`` headers in the shapes real
    servers send: several links in one header and in several headers, a comma inside a quoted
    parameter, relation lists in any case, absolute, path-relative and query-relative targets."""

    def __init__(self, *, loop: bool = False) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.paths.append(self.path)
                base = f"http://127.0.0.1:{self.server.server_address[1]}"
                query = dict(httpx.URL(self.path).params)
                page = {"p2": 2, "p3": 3}.get(query.get("page_info", ""), 1)
                links = {
                    1: [
                        f'<{base}/admin/products.json?page_info=p0>; rel="previous"; '
                        'title="first, really", <products.json?page_info=p2&limit=2>; '
                        'rel="next"'
                    ],
                    2: [
                        "</admin/products.json?limit=2>; rel=prev",
                        '</admin/products.json?page_info=p3&limit=2>; REL="Last Next"',
                    ],
                    3: [
                        '<?page_info=p2&limit=2>; rel="next"'
                        if loop
                        else f'<{base}/admin/products.json?page_info=p2>; rel="prev first"'
                    ],
                }[page]
                payload = json.dumps(
                    {"products": [medicine(n) for n in (2 * page - 1, 2 * page)]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                for value in links:
                    self.send_header("Link", value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/admin/products.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,))
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def link_backend() -> Iterator[Callable[..., LinkPagedBackend]]:
    made: list[LinkPagedBackend] = []

    def make(**kwargs: Any) -> LinkPagedBackend:
        made.append(LinkPagedBackend(**kwargs))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_link_header_pages_are_followed(link_backend: Callable[..., LinkPagedBackend]) -> None:
    server = link_backend()
    source = open_catalog(server.url, options={"backoff": 0})
    assert [p.id for p in source] == [f"m{n}" for n in range(1, 7)]
    assert server.paths == [
        "/admin/products.json",
        "/admin/products.json?page_info=p2&limit=2",
        "/admin/products.json?page_info=p3&limit=2",
    ]
    explicit = link_backend()
    source = open_catalog(explicit.url, options={"pagination": "link", "limit": 2})
    assert len(list(source)) == 6
    assert explicit.paths[0] == "/admin/products.json?limit=2"


def test_a_link_back_to_an_earlier_page_is_an_error(
    link_backend: Callable[..., LinkPagedBackend],
) -> None:
    server = link_backend(loop=True)
    with pytest.raises(CatalogError, match=r"Link header points back to .*page_info=p2"):
        list(open_catalog(server.url, options={"pagination": "link", "limit": None}))


def test_link_header_parsing() -> None:
    from catalens.catalog.link_header import next_link, parse_links

    value = '<a;b,c>; rel="next, or not"; Title*=UTF-8\'\'x, <b> ; rel=next ; x="q\\"q"'
    assert parse_links(value) == [
        ("a;b,c", {"rel": "next, or not", "title*": "UTF-8''x"}),
        ("b", {"rel": "next", "x": 'q"q'}),
    ]
    base = httpx.URL("http://shop.test/api/v1/products?page=1")
    assert next_link([value], base) == httpx.URL("http://shop.test/api/v1/b")
    assert next_link(['<../x>; rel="prev next"'], base) == httpx.URL("http://shop.test/api/x")
    assert next_link(['<x>; rel="nextish"', "garbage"], base) is None
    assert next_link([], base) is None
