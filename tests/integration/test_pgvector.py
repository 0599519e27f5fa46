"""The pgvector store against a real PostgreSQL (pgserver): congruence with FAISS, HNSW recall,
filters that still return top_k, model identity, the extension check, a killed ingest, and
the service picking the store from ``--store``."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from numpy.typing import NDArray
from psycopg import sql

from catalens.collection.config import SourceConfig
from catalens.errors import ConfigError, ModelMismatchError, StoreError
from catalens.service.service import CatalensService, build_service
from catalens.service.trusted import TrustedPath
from catalens.settings import Settings
from catalens.stores import FaissOptions, FaissStore
from catalens.stores.pg_local import stop_local
from catalens.stores.pg_schema import ensure_vector_extension
from catalens.stores.pgvector_store import PgVectorStore
from catalens.types import ModelIdentity, Product

pytestmark = pytest.mark.postgres

K = 10


@pytest.fixture
def opened(pg_dsn: str) -> Iterator[list[PgVectorStore]]:
    """Stores a test opens, closed after it."""
    stores: list[PgVectorStore] = []
    yield stores
    for store in stores:
        store.close()


def open_store(
    dsn: str, name: str, dim: int, opened: list[PgVectorStore], **options: Any
) -> PgVectorStore:
    store = PgVectorStore(dsn, name, dim, **options)
    opened.append(store)
    return store


def mixture(
    n: int, dim: int, seed: int, *, labels: NDArray[np.int64] | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Unit vectors of a Gaussian mixture of 100 centres (clustered like image embeddings),
    and their centres (random, unless ``labels`` gives them)."""
    means = np.random.default_rng(0).standard_normal((100, dim))
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = rng.integers(0, 100, n)
    points = means[labels] + 0.35 * rng.standard_normal((n, dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points.astype(np.float32), labels


def exact_top(
    vectors: NDArray[np.float32], ids: NDArray[np.int64], queries: NDArray[np.float32], k: int
) -> tuple[list[list[int]], NDArray[np.float64]]:
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order].tolist(), np.take_along_axis(scores, order, axis=1)


def ids_of(results: list[list[Any]]) -> list[list[int]]:
    return [[m.image_id for m in row] for row in results]


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / sum(len(t) for t in truth)


# -- congruence and recall ----------------------------------------------------------------


def test_exact_search_is_congruent_with_faiss_flat(
    pg_dsn: str, tmp_path: Path, opened: list[PgVectorStore]
) -> None:
    vectors, _ = mixture(3000, 64, seed=1)
    queries, _ = mixture(40, 64, seed=2)
    ids = list(range(100, 3100))
    products = [f"p{i // 3}" for i in ids]
    faiss = FaissStore.open(tmp_path / "faiss", dim=64, options=FaissOptions())
    flat = open_store(pg_dsn, "congruent-flat", 64, opened, index="flat")
    hnsw = open_store(pg_dsn, "congruent-hnsw", 64, opened, index="hnsw", m=8, ef_construction=32)
    for store in (faiss, flat, hnsw):
        store.upsert(ids, products, vectors)
        store.flush(tag="1")
    expected = faiss.search(queries, K)
    for got in (flat.search(queries, K), hnsw.search(queries, K, exact=True)):
        assert ids_of(got) == ids_of(expected)
        assert [[m.product_id for m in r] for r in got] == [
            [m.product_id for m in r] for r in expected
        ]
        np.testing.assert_allclose(
            [[m.score for m in r] for r in got],
            [[m.score for m in r] for r in expected],
            atol=1e-5,
            rtol=0,
        )


@pytest.fixture(scope="module")
def clustered(pg_dsn: str) -> Iterator[tuple[PgVectorStore, NDArray[np.float32], list[int]]]:
    """20k clustered 64-d vectors in an HNSW store, two images per product; products carry
    ``cat`` (1% each) and ``half`` (which half of the clusters the product lies in)."""
    # Both images of a product come from the same centre; products come in random order.
    centres = np.random.default_rng(3).integers(0, 100, 10_000)
    vectors, _ = mixture(20_000, 64, seed=3, labels=np.repeat(centres, 2))
    ids = list(range(20_000))
    store = PgVectorStore(
        pg_dsn, "clustered", 64, index="hnsw", m=16, ef_construction=64, ef_search=64
    )
    store.upsert(ids, [f"p{i // 2}" for i in ids], vectors)
    store.upsert_products(
        [
            Product(
                f"p{p}",
                f"Product {p}",
                (),
                {"cat": f"c{p % 100}", "half": "low" if centres[p] < 50 else "high"},
            )
            for p in range(10_000)
        ]
    )
    store.flush(tag="1")
    yield store, vectors, ids
    store.close()


def test_hnsw_recall_on_clustered_vectors(
    pg_dsn: str, clustered: tuple[PgVectorStore, NDArray[np.float32], list[int]]
) -> None:
    store, vectors, ids = clustered
    queries, _ = mixture(100, 64, seed=4)
    truth, _ = exact_top(vectors, np.asarray(ids), queries, K)
    found = store.search(queries, K)
    assert recall(ids_of(found), truth) >= 0.95
    # ... through the index, not by scanning; the exact scan agrees with brute force.
    with psycopg.connect(pg_dsn) as conn:
        plan = conn.execute(
            sql.SQL(
                "EXPLAIN SELECT image_id FROM {} ORDER BY embedding <=> %s::vector LIMIT 10"
            ).format(store.names.table("images")),
            (str(queries[0].tolist()),),
        ).fetchall()
    assert "images_embedding_idx" in " ".join(row[0] for row in plan)
    assert ids_of(store.search(queries[:5], K, exact=True)) == truth[:5]


def _filtered_truth(
    vectors: NDArray[np.float32], keep: NDArray[np.bool_], queries: NDArray[np.float32], k: int
) -> tuple[list[list[int]], NDArray[np.float64]]:
    ids = np.flatnonzero(keep)
    return exact_top(vectors[ids], ids.astype(np.int64), queries, k)


def test_selective_filter_scans_filtered_rows_exactly(
    clustered: tuple[PgVectorStore, NDArray[np.float32], list[int]],
) -> None:
    store, vectors, _ = clustered
    queries, _ = mixture(5, 64, seed=5)
    plan = store.plan_filter(K, {"cat": "c7"})
    assert plan.strategy == "exact"
    assert 50 <= plan.estimated_rows <= 1000  # 200 real rows
    found = store.search(queries, K, product_filter={"cat": "c7"})
    keep = np.array([(i // 2) % 100 == 7 for i in range(len(vectors))])
    truth, scores = _filtered_truth(vectors, keep, queries, K)
    assert ids_of(found) == truth
    np.testing.assert_allclose([[m.score for m in r] for r in found], scores, atol=1e-5)
    # A list means "any of"; no match at all gives nothing rather than something else.
    both = store.search(queries[:1], K, product_filter={"cat": ["c7", "c8"]})[0]
    assert len(both) == K and all(int(m.product_id[1:]) % 100 in (7, 8) for m in both)
    assert store.search(queries[:1], K, product_filter={"cat": "c7", "half": "nowhere"}) == [[]]


def test_unselective_filter_over_fetches_and_widens(
    clustered: tuple[PgVectorStore, NDArray[np.float32], list[int]],
) -> None:
    store, vectors, _ = clustered
    plan = store.plan_filter(K, {"half": "low"})
    assert plan.strategy == "overfetch"
    # Queries from "high" clusters: the first neighbours fetched are all filtered out, so
    # the search has to widen before it has K rows.
    queries, labels = mixture(60, 64, seed=6)
    queries = queries[labels >= 50][:10]
    halves = {f"p{p}": m for p, m in enumerate(_product_halves(vectors))}
    found = store.search(queries, K, product_filter={"half": "low"})
    assert all(len(row) == K for row in found)
    assert all(halves[m.product_id] == "low" for row in found for m in row)
    keep = np.array([halves[f"p{i // 2}"] == "low" for i in range(len(vectors))])
    truth, _ = _filtered_truth(vectors, keep, queries, K)
    assert recall(ids_of(found), truth) >= 0.9


def _product_halves(vectors: NDArray[np.float32]) -> list[str]:
    centres = np.random.default_rng(3).integers(0, 100, len(vectors) // 2)
    return ["low" if c < 50 else "high" for c in centres]


def test_products_can_be_deleted_from_the_filter(pg_dsn: str, opened: list[PgVectorStore]) -> None:
    vectors, _ = mixture(50, 16, seed=7)
    store = open_store(pg_dsn, "products", 16, opened, index="flat")
    store.upsert(list(range(50)), [f"p{i}" for i in range(50)], vectors)
    store.upsert_products([Product(f"p{i}", "", (), {"even": i % 2 == 0}) for i in range(50)])
    store.flush(tag="1")
    assert {
        m.product_id for m in store.search(vectors[:1], 50, product_filter={"even": True})[0]
    } == {f"p{i}" for i in range(0, 50, 2)}
    store.delete_products(["p0", "p2"])
    store.flush(tag="2")
    found = store.search(vectors[:1], 50, product_filter={"even": True})[0]
    assert len(found) == 23


# -- identity, options, extension ---------------------------------------------------------


def _model(name: str, dim: int = 8) -> ModelIdentity:
    return ModelIdentity(name=name, revision="r1", dim=dim, preprocessing={"size": 224})


def test_model_identity_is_checked_on_open(pg_dsn: str, opened: list[PgVectorStore]) -> None:
    store = open_store(pg_dsn, "identity", 8, opened, index="flat", model=_model("a"))
    store.upsert([1], ["p"], np.eye(8, dtype=np.float32)[:1])
    store.flush(tag="1")
    assert len(open_store(pg_dsn, "identity", 8, opened, index="flat", model=_model("a"))) == 1
    with pytest.raises(ModelMismatchError, match="holds vectors of a"):
        open_store(pg_dsn, "identity", 8, opened, index="flat", model=_model("b"))
    with pytest.raises(StoreError, match="holds 8-d vectors"):
        open_store(pg_dsn, "identity", 16, opened, index="flat")
    with pytest.raises(StoreError, match="rebuild the collection"):
        open_store(pg_dsn, "identity", 8, opened, index="hnsw")
    with pytest.raises(ConfigError):
        open_store(pg_dsn, "identity", 8, opened, index="ivf")  # type: ignore[arg-type]


def test_migrations_bring_an_old_schema_up_to_date(
    pg_dsn: str, opened: list[PgVectorStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    from catalens.stores import pg_schema

    latest = pg_schema.MIGRATIONS
    monkeypatch.setattr(pg_schema, "MIGRATIONS", latest[:1])
    old = open_store(pg_dsn, "migrated", 600, opened, index="flat")
    old.upsert([1, 2], ["a", "b"], np.eye(2, 600, dtype=np.float32))
    old.flush(tag="1")
    old.close()
    monkeypatch.setattr(pg_schema, "MIGRATIONS", latest)
    store = open_store(pg_dsn, "migrated", 600, opened, index="flat")
    assert store.generation() == "1" and len(store) == 2
    with _admin(pg_dsn) as conn:
        versions = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                store.names.table("schema_version")
            )
        ).fetchall()
        assert [v for (v,) in versions] == list(range(1, len(latest) + 1))
        storage = conn.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass"
            " AND attname = 'embedding'",
            (f"{store.names.schema}.images",),
        ).fetchone()
        assert storage == ("p",)  # v3: 600-d vectors stay inline, not TOASTed
        conn.execute(
            sql.SQL("INSERT INTO {} (version) VALUES (99)").format(
                store.names.table("schema_version")
            )
        )
    with pytest.raises(StoreError, match="upgrade catalens"):
        open_store(pg_dsn, "migrated", 600, opened, index="flat")


def _admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def _database(dsn: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]


def test_missing_vector_extension_says_how_to_install_it(pg_dsn: str) -> None:
    with _admin(pg_dsn) as admin:
        admin.execute("DROP DATABASE IF EXISTS noext")
        admin.execute("CREATE DATABASE noext")
        admin.execute("DROP ROLE IF EXISTS plain")
        admin.execute("CREATE ROLE plain LOGIN")
        admin.execute("GRANT ALL ON DATABASE noext TO plain")
    noext = _database(pg_dsn, "noext")
    with _admin(noext) as admin:
        admin.execute("GRANT ALL ON SCHEMA public TO plain")
        # Enabled, then dropped: the check sees it gone and does not create it when told not to.
        admin.execute("CREATE EXTENSION vector")
        admin.execute("DROP EXTENSION vector")
        with pytest.raises(StoreError, match=r"run `CREATE EXTENSION vector;`"):
            ensure_vector_extension(admin, create=False)
    # A user who may not create it gets the command for a superuser to run.
    params = psycopg.conninfo.conninfo_to_dict(noext)
    params["user"] = "plain"
    as_plain = psycopg.conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match=r"superuser, run `CREATE EXTENSION vector;`"):
        PgVectorStore(as_plain, "needs-vector", 8)
    # A superuser's store enables it itself.
    with PgVectorStore(noext, "needs-vector", 8, index="flat") as store:
        assert len(store) == 0


def test_bad_dsn_is_a_store_error_without_the_password() -> None:
    with pytest.raises(StoreError) as raised:
        PgVectorStore("postgresql://someone:s3cret@127.0.0.1:1/nowhere", "x", 8, connect_timeout=2)
    assert "s3cret" not in str(raised.value)
    assert "127.0.0.1:1" in str(raised.value)


# -- a killed ingest ------------------------------------------------------------------------

INGEST = """
import sys, time
import numpy as np
from catalens.stores.pgvector_store import PgVectorStore

dsn, name, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = PgVectorStore(dsn, name, 16, index="hnsw", m=8, ef_construction=32)
for batch in range(int(store.generation() or 0), 8):
    rng = np.random.default_rng(batch)
    ids = list(range(batch * 100, batch * 100 + 150))  # overlaps: replaces the last 50
    vectors = rng.standard_normal((150, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store.upsert(ids, [f"p{i % 37}-{batch}" for i in ids], vectors)
    store.delete(list(range(max(0, batch * 100 - 90), max(0, batch * 100 - 80))))
    if batch == pause_at:
        print("pending", flush=True)
        time.sleep(120)
    store.flush(tag=str(batch + 1))
    print("flushed", batch + 1, flush=True)
store.close()
"""


def _expected_rows(batches: int) -> dict[int, tuple[str, NDArray[np.float32]]]:
    rows: dict[int, tuple[str, NDArray[np.float32]]] = {}
    for batch in range(batches):
        rng = np.random.default_rng(batch)
        vectors = rng.standard_normal((150, 16)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for offset, image in enumerate(range(batch * 100, batch * 100 + 150)):
            rows[image] = (f"p{image % 37}-{batch}", vectors[offset])
        for image in range(batch * 100 - 90, batch * 100 - 80):
            rows.pop(image, None)
    return rows


def _ingest(dsn: str, name: str, pause_at: int, *, kill_after: str | None = None) -> int:
    """Run the ingest; with ``kill_after``, SIGKILL it once it prints that line."""
    process = subprocess.Popen(
        [sys.executable, "-c", INGEST, dsn, name, str(pause_at)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            if kill_after is not None and line.strip() == kill_after:
                process.send_signal(signal.SIGKILL)
                break
        return process.wait(timeout=60)


def _rows(dsn: str, store: PgVectorStore) -> dict[int, tuple[str, NDArray[np.float32]]]:
    with _admin(dsn) as conn:
        fetched = conn.execute(
            sql.SQL("SELECT image_id, product_id, embedding::text FROM {}").format(
                store.names.table("images")
            )
        ).fetchall()
    return {int(i): (str(p), np.asarray(json.loads(v), dtype=np.float32)) for i, p, v in fetched}


def _assert_rows(
    got: dict[int, tuple[str, NDArray[np.float32]]],
    want: dict[int, tuple[str, NDArray[np.float32]]],
) -> None:
    assert sorted(got) == sorted(want)
    for image, (product, vector) in want.items():
        assert got[image][0] == product
        np.testing.assert_allclose(got[image][1], vector, atol=1e-6)


@pytest.mark.slow
def test_killed_ingest_keeps_the_last_flush_and_resumes(
    pg_dsn: str, opened: list[PgVectorStore]
) -> None:
    # Killed with a batch written but not flushed: generation 3 stays, exactly as flushed.
    assert _ingest(pg_dsn, "killed", pause_at=3, kill_after="pending") == -signal.SIGKILL
    store = open_store(pg_dsn, "killed", 16, opened, index="hnsw", m=8, ef_construction=32)
    assert store.generation() == "3"
    want = _expected_rows(3)
    _assert_rows(_rows(pg_dsn, store), want)
    assert len(store) == len(want)
    probe = max(want)
    assert store.search(want[probe][1][None, :], 1)[0][0].image_id == probe
    # Killed whenever it happens to be after the 5th flush: still a whole generation.
    assert _ingest(pg_dsn, "killed", pause_at=-1, kill_after="flushed 5") == -signal.SIGKILL
    generation = int(store.generation() or 0)
    assert generation >= 5
    _assert_rows(_rows(pg_dsn, store), _expected_rows(generation))
    # The re-run converges to the same rows as an uninterrupted run.
    assert _ingest(pg_dsn, "killed", pause_at=-1) == 0
    assert _ingest(pg_dsn, "uninterrupted", pause_at=-1) == 0
    clean = open_store(pg_dsn, "uninterrupted", 16, opened, index="hnsw", m=8, ef_construction=32)
    assert store.generation() == clean.generation() == "8"
    _assert_rows(_rows(pg_dsn, store), _rows(pg_dsn, clean))
    _assert_rows(_rows(pg_dsn, clean), _expected_rows(8))
    assert len(store) == len(clean)


# -- through the service --------------------------------------------------------------------


def _catalog(folder: Path) -> Path:
    from PIL import Image, ImageDraw

    rows = []
    colours = [(200, 30, 30), (30, 160, 40), (30, 60, 200), (220, 200, 20)]
    for i, colour in enumerate(colours):
        names = []
        for shape in ("box", "circle"):
            image = Image.new("RGB", (96, 96), "white")
            draw = ImageDraw.Draw(image)
            if shape == "box":
                draw.rectangle((16, 16, 80, 80), fill=colour)
            else:
                draw.ellipse((16, 16, 80, 80), fill=colour)
            path = folder / "img" / f"p{i}-{shape}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            names.append(f"img/{path.name}")
        rows.append({"id": f"p{i}", "title": f"Product {i}", "images": names})
    catalog = folder / "catalog.jsonl"
    catalog.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return catalog


def _service(home: Path, model: Path, store: str) -> CatalensService:
    return build_service(
        Settings(
            home=home,
            model=str(model),
            store=store,
            index="hnsw",
            batch_size=4,
            query_zooms=(1.0,),
            centering=False,
            aggregation="max",
        )
    )


def _close(service: CatalensService) -> None:
    for name in service.collection_names():
        store = service.collection(name).store
        if isinstance(store, PgVectorStore):
            store.close()
    service.close()


def test_service_store_from_dsn_rebuilds_a_lagging_store_on_start(
    pg_dsn: str, tmp_path: Path, mobilenet_dir: Path
) -> None:
    catalog = _catalog(tmp_path)
    service = _service(tmp_path / "home", mobilenet_dir, pg_dsn)
    report = service.ingest("shop", SourceConfig(location=str(catalog)))
    assert report.images_embedded == 8
    store = service.collection("shop").store
    assert isinstance(store, PgVectorStore) and len(store) == 8
    hit = service.search("shop", image=TrustedPath(tmp_path / "img" / "p2-box.png"), top_k=1)[0]
    assert hit.product_id == "p2"
    assert hit.score == pytest.approx(1.0, abs=1e-4)
    names = store.names
    _close(service)
    # The database loses the vectors (a restore from an old backup, a wiped table): on
    # start, the collection sees the store lagging behind its ledger and embeds it again.
    with _admin(pg_dsn) as conn:
        conn.execute(sql.SQL("DELETE FROM {}").format(names.table("images")))
        conn.execute(
            sql.SQL("UPDATE {} SET value = '\"0\"' WHERE key = 'generation'").format(
                names.table("meta")
            )
        )
    service = _service(tmp_path / "home", mobilenet_dir, pg_dsn)
    try:
        collection = service.collection("shop")
        assert collection.store.generation() == str(collection.ledger.generation)
        with _admin(pg_dsn) as conn:
            count = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(names.table("images"))
            ).fetchone()
        assert count == (8,)
        assert len(collection.store) == 8
        hit = service.search(
            "shop", image=TrustedPath(tmp_path / "img" / "p3-circle.png"), top_k=1
        )[0]
        assert hit.product_id == "p3"
    finally:
        _close(service)


def test_unknown_store_is_a_config_error(tmp_path: Path, mobilenet_dir: Path) -> None:
    service = _service(tmp_path / "home", mobilenet_dir, "mysql://nope")
    try:
        with pytest.raises(ConfigError, match="postgres-local"):
            service.ingest("shop", SourceConfig(location=str(_catalog(tmp_path))))
    finally:
        service.close()


@pytest.mark.slow
def test_postgres_local_starts_an_embedded_server_under_home(
    pg_dsn: str, tmp_path: Path, mobilenet_dir: Path
) -> None:
    # Outside pytest's private tmp: the server runs as another user when tests run as root.
    home = Path(tempfile.mkdtemp(prefix="catalens-local-"))
    service = _service(home, mobilenet_dir, "postgres-local")
    try:
        started = time.monotonic()
        service.ingest("shop", SourceConfig(location=str(_catalog(tmp_path))))
        assert time.monotonic() - started < 60
        assert (home / "postgres" / "PG_VERSION").is_file()
        hit = service.search("shop", image=TrustedPath(tmp_path / "img" / "p1-box.png"), top_k=1)[0]
        assert hit.product_id == "p1"
    finally:
        _close(service)
        stop_local(home / "postgres")
        shutil.rmtree(home, ignore_errors=True)
