"""Safe by type: the service called the way an HTTP route calls it cannot read a local file
or reach a guarded address.

A route has only a user's strings. As a query image the service takes bytes, a ``RemoteURL``
(fetched behind the address guard) or a decoded image; a plain ``str``/``Path`` is refused,
and a ``TrustedPath`` cannot be imported by ``catalens.api`` (``.importlinter``). Image refs
of an untrusted upsert are read from disk only under ``api_local_image_dirs``; so are a
source created without ``trusted`` (as the API creates one) and the images its catalog
names, on every sync, and its REST pages are fetched behind the address guard. Each refusal
has a positive twin (the same image through the allowed door works), so these tests fail if
the door is simply shut for everyone."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from catalens.collection.config import SourceConfig
from catalens.errors import BlockedPathError, BlockedURLError, ConfigError
from catalens.ingest.url_guard import AddressGuard
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service import RemoteURL
from catalens.service.guarded_http import GuardedTransport
from catalens.service.service import CatalensService
from catalens.service.trusted import TRUSTED_REFS, TrustedPath
from catalens.types import Product


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("untrusted-sample"), products=4)


class _Images(BaseHTTPRequestHandler):
    """Serves one image at any path and counts the requests that reached it."""

    body: ClassVar[bytes] = b""
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def loopback(sample: SampleCatalog) -> Iterator[tuple[str, list[str]]]:
    """A real image server on 127.0.0.1: (its base URL, the paths requested so far)."""
    _Images.body = sample.products[0].images[0].read_bytes()
    _Images.hits = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Images.hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def shop(make_fake_service: Callable[..., CatalensService], sample: SampleCatalog) -> Any:
    """``shop(**settings)``: a fake-embedder service with the sample catalog as ``shop``."""

    def make(**overrides: object) -> CatalensService:
        service = make_fake_service(**overrides)
        service.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
        return service

    return make


def test_a_users_string_is_never_opened_as_a_path(shop: Any, sample: SampleCatalog) -> None:
    service = shop()
    photo = sample.products[1].images[0]  # a real, readable image file
    for given in (str(photo), photo, "/etc/passwd"):
        with pytest.raises(TypeError, match="TrustedPath"):
            service.search("shop", image=given, top_k=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="TrustedPath"):
            service.query("shop", image=given)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="TrustedPath"):
            service.embed_image(given)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="TrustedPath"):
            service.feedback(
                "shop",
                image=given,  # type: ignore[arg-type]
                verdict="correct",
                product_id=sample.products[1].id,
            )
    assert service.confirmed_views("shop") == []
    # The same file through the operator's door is found: the refusal was about the type.
    hit = service.search("shop", image=TrustedPath(photo), top_k=1)[0]
    assert hit.product_id == sample.products[1].id and hit.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "/etc/passwd",
        "FILE:///etc/hostname",
        "ftp://127.0.0.1/image.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/image.png",
        "http://10.0.0.1/image.png",
    ],
)
def test_a_remote_url_never_reads_a_file_or_an_internal_address(shop: Any, url: str) -> None:
    service = shop()
    with pytest.raises(BlockedURLError):
        service.search("shop", image=RemoteURL(url), top_k=1)
    with pytest.raises(BlockedURLError):
        service.embed_image(RemoteURL(url))


def test_a_remote_url_on_loopback_is_refused_before_connecting(
    shop: Any, sample: SampleCatalog, loopback: tuple[str, list[str]]
) -> None:
    base, requests = loopback
    port = base.rsplit(":", 1)[1]
    for url in (f"{base}/photo.png", f"http://localhost:{port}/photo.png"):
        with pytest.raises(BlockedURLError):
            shop().search("shop", image=RemoteURL(url), top_k=1)
    assert requests == []
    # Allowlisted by the operator, the same server answers, and the image is found.
    allowed = shop(url_allowlist=(f"127.0.0.1:{port}",))
    hit = allowed.search("shop", image=RemoteURL(f"{base}/photo.png"), top_k=1)[0]
    assert requests == ["/photo.png"]
    assert hit.product_id == sample.products[0].id


def _product(ref: str) -> Product:
    return Product(id="new", title="New", images=(ref,))


def test_an_untrusted_upsert_cannot_name_a_local_file(
    shop: Any, sample: SampleCatalog, tmp_path: Path
) -> None:
    service = shop()
    image = sample.products[2].images[0]
    for ref in (str(image), image.as_uri(), "/etc/passwd", "../../etc/passwd"):
        with pytest.raises(BlockedPathError, match="CATALENS_API_LOCAL_IMAGE_DIRS"):
            service.upsert_products("shop", [_product(ref)])
    assert "new" not in service.collection("shop").ledger.product_ids()
    # A symlink inside an allowed directory does not lead out of it.
    allowed_dir = tmp_path / "allowed"
    allowed_dir.mkdir()
    (allowed_dir / "escape.png").symlink_to(image)
    opened = shop(api_local_image_dirs=(allowed_dir,))
    with pytest.raises(BlockedPathError):
        opened.upsert_products("shop", [_product(str(allowed_dir / "escape.png"))])
    # Under a directory the operator allowed, the file is read and embedded.
    (allowed_dir / "inside.png").write_bytes(image.read_bytes())
    report = opened.upsert_products("shop", [_product(str(allowed_dir / "inside.png"))])
    assert (report.products_added, report.images_failed, report.images_reused) == (1, 0, 1)
    # Library code that vouches for its refs reads any local path, as a catalog ingest does.
    trusted = service.upsert_products("shop", [_product(str(image))], trusted=TRUSTED_REFS)
    assert (trusted.products_added, trusted.images_failed) == (1, 0)


def test_an_untrusted_upsert_fetches_urls_behind_the_guard(
    shop: Any, loopback: tuple[str, list[str]]
) -> None:
    base, requests = loopback
    report = shop().upsert_products("shop", [_product(f"{base}/product.png")])
    assert report.images_failed == 1 and "loopback" in report.failed[0].reason
    assert requests == []
    port = base.rsplit(":", 1)[1]
    allowed = shop(url_allowlist=(f"127.0.0.1:{port}",))
    report = allowed.upsert_products("shop", [_product(f"{base}/product.png")])
    assert (report.images_failed, report.images_reused) == (0, 1)  # a catalog image
    assert requests == ["/product.png"]


# -- sources named over HTTP (create_collection without ``trusted``) ----------------------


def _catalog(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A CSV catalog: one (product id, image ref) per row."""
    lines = [f"{pid},Product {pid},{ref}" for pid, ref in rows]
    path.write_text("id,title,image\n" + "\n".join(lines) + "\n")
    return path


def test_an_untrusted_source_is_a_local_catalog_only_under_the_allowed_dirs(
    make_fake_service: Callable[..., CatalensService], sample: SampleCatalog, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "p1.png").write_bytes(sample.products[0].images[0].read_bytes())
    inside = _catalog(allowed / "catalog.csv", [("p1", "p1.png")])
    (allowed / "escape.csv").symlink_to(sample.catalog_csv)  # leads out of the folder
    service = make_fake_service(api_local_image_dirs=(allowed,))
    for location in (str(sample.catalog_csv), str(allowed / "escape.csv"), "/etc/passwd"):
        with pytest.raises(BlockedPathError, match="CATALENS_API_LOCAL_IMAGE_DIRS"):
            service.create_collection("shop", source=SourceConfig(location=location))
        assert service.collection_names() == []  # refused before anything was created
    with pytest.raises(BlockedPathError):  # nothing allowed: no local catalog at all
        make_fake_service().create_collection("shop", source=SourceConfig(str(inside)))
    # Under the allowed folder the catalog is created, marked, and read by a sync.
    created = service.create_collection("shop", source=SourceConfig(location=str(inside)))
    assert created.config.source is not None and created.config.source.untrusted
    report = service.sync("shop")
    assert (report.products_added, report.images_failed) == (1, 0)
    # The CLI's door (ingest with a source) still reads the operator's files anywhere.
    assert (
        make_fake_service().ingest("cli", SourceConfig(str(sample.catalog_csv))).images_failed == 0
    )


def test_the_images_an_untrusted_catalog_names_are_read_only_under_the_allowed_dirs(
    make_fake_service: Callable[..., CatalensService], sample: SampleCatalog, tmp_path: Path
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    secret = tmp_path / "secret.png"  # a real image, outside the allowed folder
    secret.write_bytes(sample.products[1].images[0].read_bytes())
    (allowed / "passwd.png").symlink_to("/etc/passwd")
    (allowed / "secret.png").symlink_to(secret)
    (allowed / "ok.png").write_bytes(sample.products[0].images[0].read_bytes())
    blocked = {
        "abs": str(secret),
        "up": "../secret.png",  # relative to the catalog's folder: outside it
        "passwd": str(allowed / "passwd.png"),
        "link": str(allowed / "secret.png"),
    }
    rows = [("ok", str(allowed / "ok.png")), *blocked.items()]
    catalog = _catalog(allowed / "catalog.csv", rows)
    service = make_fake_service(api_local_image_dirs=(allowed,))
    service.create_collection("shop", source=SourceConfig(location=str(catalog)))
    report = service.sync("shop")
    assert report.images_embedded == 1
    assert sorted(f.product_id for f in report.failed) == sorted(blocked)
    assert all("CATALENS_API_LOCAL_IMAGE_DIRS" in f.reason for f in report.failed)
    ledger = service.collection("shop").ledger
    for pid in blocked:
        (row,) = ledger.images_of(pid)
        assert row.status == "failed" and row.content_hash is None  # never read
        with pytest.raises(BlockedPathError):  # what the image route reads them with
            service.catalog_fetcher("shop").fetch(row.ref)
    with pytest.raises(BlockedPathError):  # a file: URL (the CSV reader rejects those)
        service.catalog_fetcher("shop").fetch(secret.as_uri())
    # The secret is not searchable: a search with its bytes finds the allowed image only.
    hits = service.search("shop", image=secret.read_bytes(), top_k=5)
    assert [hit.product_id for hit in hits] in ([], ["ok"])
    # A later sync reads the source again under the same rule, from its saved config.
    _catalog(catalog, [("ok", str(secret))])
    reopened = make_fake_service(  # the one row left removes 4 of 5: allowed here
        home=service.settings.home, api_local_image_dirs=(allowed,), max_removed_share=1.0
    )
    again = reopened.sync("shop")
    assert again.images_failed == 1 and "CATALENS_API_LOCAL_IMAGE_DIRS" in again.failed[0].reason
    # The operator's twin: the same catalog ingested from the library reads every file.
    trusted = make_fake_service().ingest("cli", SourceConfig(location=str(catalog)))
    assert trusted.images_failed == 0


def test_a_refused_path_says_nothing_about_whether_it_exists(
    make_fake_service: Callable[..., CatalensService], sample: SampleCatalog, tmp_path: Path
) -> None:
    """The guard decides before the file is looked at: a missing file and an existing one
    outside the allowed dirs fail with the same reason (a probe learns nothing)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "there.png").write_bytes(sample.products[0].images[0].read_bytes())
    rows = [("there", str(outside / "there.png")), ("missing", str(outside / "missing.png"))]
    catalog = _catalog(allowed / "catalog.csv", rows)
    service = make_fake_service(api_local_image_dirs=(allowed,))
    service.create_collection("shop", source=SourceConfig(location=str(catalog)))
    reasons = {f.product_id: f.reason for f in service.sync("shop").failed}
    assert set(reasons) == {"there", "missing"}
    assert "CATALENS_API_LOCAL_IMAGE_DIRS" in reasons["there"]
    assert reasons["there"].replace("there", "X") == reasons["missing"].replace("missing", "X")
    fetcher = service.catalog_fetcher("shop")
    refused = []
    for name in ("there.png", "missing.png"):
        with pytest.raises(BlockedPathError) as error:
            fetcher.fetch(str(outside / name))
        refused.append(str(error.value).replace(name, "X"))
    assert refused[0] == refused[1]
    # The operator's twin: the library's ingest of the same catalog tells the two apart, so
    # the difference the refusal hides is real.
    trusted = make_fake_service().ingest("cli", SourceConfig(location=str(catalog)))
    assert [f.product_id for f in trusted.failed] == ["missing"]


class _Backend(BaseHTTPRequestHandler):
    """A shop backend: ``/medicines`` lists one product whose image is ``/photo.png``;
    ``/redirect?to=URL`` answers 302. Counts the requests that reached it."""

    image: ClassVar[bytes] = b""
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        host = self.headers["Host"]
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/medicines"):
            kind = "application/json"
            body = json.dumps([{"id": "m1", "name": "M", "image": f"http://{host}/photo.png"}])
            data = body.encode()
        else:
            kind, data = "image/png", self.image
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def backends(sample: SampleCatalog) -> Iterator[list[tuple[str, list[str]]]]:
    """Two shop backends on 127.0.0.1: [(base URL, requests it got)] each."""
    running = []
    for _ in range(2):
        handler = type(
            "Backend", (_Backend,), {"image": sample.products[0].images[0].read_bytes(), "hits": []}
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append((server, handler))
    try:
        yield [(f"http://127.0.0.1:{s.server_address[1]}", h.hits) for s, h in running]
    finally:
        for server, _ in running:
            server.shutdown()
            server.server_close()


def _rest(url: str, **options: Any) -> SourceConfig:
    return SourceConfig(location=url, format="rest", options=options)


def test_an_untrusted_rest_source_is_read_behind_the_address_guard(
    make_fake_service: Callable[..., CatalensService],
    backends: list[tuple[str, list[str]]],
) -> None:
    (shop, shop_hits), (internal, internal_hits) = backends
    with pytest.raises(BlockedURLError, match="loopback"):
        make_fake_service().create_collection("meds", source=_rest(f"{shop}/medicines"))
    assert shop_hits == []
    allowed = make_fake_service(url_allowlist=(shop.removeprefix("http://"),))
    assert allowed.collection_names() == []
    allowed.create_collection("meds", source=_rest(f"{shop}/medicines"))
    report = allowed.sync("meds")
    assert (report.products_added, report.images_failed) == (1, 0)
    assert shop_hits == ["/medicines", "/photo.png"]
    # A redirect from the allowed backend to an internal address is refused at that hop.
    allowed.create_collection("hop", source=_rest(f"{shop}/redirect?to={internal}/medicines"))
    with pytest.raises(BlockedURLError, match="loopback"):
        allowed.sync("hop")
    assert internal_hits == []
    # The server's environment is the operator's: no token read from it for an HTTP source.
    with pytest.raises(ConfigError, match="auth_token_env"):
        allowed.create_collection("env", source=_rest(f"{shop}/medicines", auth_token_env="HOME"))
    # The operator's backend (the rest_url setting) is read as the CLI reads a catalog.
    operator = make_fake_service(rest_url=internal)
    operator.create_backend_collection("medicines", "medicines")
    assert operator.sync("medicines").images_failed == 0
    assert internal_hits == ["/medicines", "/photo.png"]


def test_the_guarded_client_connects_to_the_checked_address_on_every_hop() -> None:
    """DNS rebinding: the request goes to the address the guard checked, with the name in
    ``Host``; a redirect to a name resolving to a private address is refused."""
    addresses = {"shop.example": ["93.184.216.34"], "inside.example": ["10.0.0.7"]}
    guard = AddressGuard(resolver=lambda host, port: addresses[host])
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if request.url.path == "/hop":
            return httpx.Response(302, headers={"Location": "http://inside.example/medicines"})
        return httpx.Response(200, json=[])

    client = httpx.Client(transport=GuardedTransport(guard, httpx.MockTransport(answer)))
    with client:
        response = client.get("http://shop.example/medicines")
        assert response.request.url.host == "shop.example"
        assert (sent[0].url.host, sent[0].headers["Host"]) == ("93.184.216.34", "shop.example")
        with pytest.raises(BlockedURLError, match="private"):
            client.get("http://shop.example/hop", follow_redirects=True)
    assert [request.url.path for request in sent] == ["/medicines", "/hop"]
