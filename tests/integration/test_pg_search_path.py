"""The search path on PostgreSQL, made lean without changing what it finds.

The pgvector store returns each candidate's vector with the neighbour query
(``SearchesWithVectors``), the state reads a search's hit rows in one round trip
(``ReadsHitRows``), the scoring looks at the state's change marker once per search, and the
store's pool checks a connection only after it sat idle, and the store keeps its row count
between searches (forgotten when the state's generation moves). Every search here is compared
with the path it replaces: the same hits, the same scores, bit for bit; a write through
another process is still seen."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from numpy.typing import NDArray

from catalens.collection.coherence import REFRESH_SECONDS
from catalens.collection.collection import Collection
from catalens.ledger.hit_rows import ReadsHitRows
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.search.query_crops import centered_scores
from catalens.search.scoring import ProductVectors
from catalens.service.collections import POSTGRES_RERANK_DEPTH
from catalens.service.service import CatalensService
from catalens.stores.base import SearchesWithVectors, VectorStore
from catalens.stores.pg_pool import IdleCheck
from catalens.stores.pgvector_store import PgVectorStore
from catalens.types import Hit, ImageMatch, Product
from pgdb import fresh_database

pytestmark = pytest.mark.postgres


class PlainStore:
    """The same store seen through the bare ``VectorStore`` protocol: the re-scoring must
    read the candidates' vectors from the collection's state, as before the store could
    return them."""

    def __init__(self, store: VectorStore) -> None:
        self._store = store

    @property
    def dim(self) -> int:
        return self._store.dim

    def __len__(self) -> int:
        return len(self._store)

    def upsert(
        self, image_ids: Sequence[int], product_ids: Sequence[str], vectors: NDArray[np.float32]
    ) -> None:
        self._store.upsert(image_ids, product_ids, vectors)

    def delete(self, image_ids: Sequence[int]) -> None:
        self._store.delete(image_ids)

    def search(self, queries: NDArray[np.float32], k: int) -> list[list[ImageMatch]]:
        return self._store.search(queries, k)

    def clear(self) -> None:
        self._store.clear()

    def close(self) -> None:
        self._store.close()

    def drop(self) -> None:
        self._store.drop()

    def flush(self, tag: str | None = None) -> None:
        self._store.flush(tag)

    def generation(self) -> str | None:
        return self._store.generation()


@pytest.fixture(params=["hnsw", "flat"])
def service(
    request: pytest.FixtureRequest, pg_dsn: str, make_fake_service: Any, tmp_path: Path
) -> Iterator[CatalensService]:
    """A service on its own database, with domain centring and blended product scores."""
    with fresh_database(pg_dsn) as dsn:
        made: CatalensService = make_fake_service(
            home=tmp_path / "home",
            store=dsn,
            index=request.param,
            centering=True,
            aggregation="blend",
        )
        yield made
        made.close()


def _unit(rows: NDArray[np.float64]) -> NDArray[np.float32]:
    unit: NDArray[np.float32] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


def _filled(service: CatalensService, dim: int) -> tuple[Collection, NDArray[np.float32]]:
    """A collection on PostgreSQL of 120 products around 6 centres; every third product has
    a second image; one product has a hard negative. Returns it and 12 queries."""
    collection = service.create_collection("lean")
    assert collection.config.model.dim == dim
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((6, dim))
    changes = ChangeSet()
    hashes: list[str] = []
    vectors: list[NDArray[np.float32]] = []
    for p in range(120):
        refs = [f"p{p}/a.jpg"] + ([f"p{p}/b.jpg"] if p % 3 == 0 else [])
        changes.products.append(
            Product(id=f"p{p}", title=f"product {p}", images=tuple(refs), metadata={"n": p})
        )
        for position, ref in enumerate(refs):
            digest = f"{p:060x}{position:04x}"
            hashes.append(digest)
            vectors.append(_unit(centres[p % 6] + 0.6 * rng.standard_normal((1, dim)))[0])
            changes.images.append(ImageChange(f"p{p}", ref, position, digest, "ok"))
    collection.ledger.save_vectors(hashes, np.vstack(vectors))
    collection.apply(changes)
    queries = _unit(centres[np.arange(12) % 6] + 0.6 * rng.standard_normal((12, dim)))
    collection.ledger.add_negative("p4", queries[4])
    for query in _unit(rng.standard_normal((10, dim))):  # enough queries: centring is on
        collection.observe_query(query)
    return collection, queries


def _plain(
    service: CatalensService, rng: np.random.Generator
) -> tuple[Collection, NDArray[np.float32]]:
    """A collection on PostgreSQL of 60 products of one image each (random unit vectors, also
    returned), no negatives or confirmed photos: the plain case the search shortcuts serve."""
    collection = service.create_collection("plain")
    vectors = _unit(rng.standard_normal((60, collection.config.model.dim)))
    changes = ChangeSet()
    for p in range(60):
        changes.products.append(Product(id=f"p{p}", title=f"product {p}", images=(f"{p}.jpg",)))
        changes.images.append(ImageChange(f"p{p}", f"{p}.jpg", 0, f"{p:064x}", "ok"))
    collection.ledger.save_vectors([f"{p:064x}" for p in range(60)], vectors)
    collection.apply(changes)
    return collection, vectors


def _searched(collection: Collection, queries: NDArray[np.float32], **options: Any) -> list[Hit]:
    return [hit for q in queries for hit in collection.search(q, top_k=5, **options)]


def test_the_store_returns_the_vectors_it_holds_with_the_same_neighbours(
    service: CatalensService,
) -> None:
    collection, queries = _filled(service, service.embedder().identity.dim)
    store = collection.store
    assert isinstance(store, PgVectorStore) and isinstance(store, SearchesWithVectors)
    saved = {i.image_id: i.content_hash for i in collection.ledger.searchable_images()}
    for query in queries[:4]:
        matches, vectors = store.search_with_vectors(query, 50)
        assert matches == store.search(query[None, :], 50)[0]
        assert vectors.dtype == np.float32 and vectors.shape == (50, store.dim)
        expected = collection.ledger.vectors_for([saved[m.image_id] for m in matches], store.dim)
        assert np.array_equal(vectors, expected)
    # An unflushed change is searched, with its vector, by the writer that made it.
    fresh = _unit(np.ones((1, store.dim)))
    store.upsert([10_000], ["new"], fresh)
    try:
        matches, vectors = store.search_with_vectors(fresh[0], 3)
        assert matches[0].image_id == 10_000 and np.array_equal(vectors[0], fresh[0])
    finally:
        store.close()  # rolls the unflushed upsert back


def test_search_finds_the_same_hits_and_scores_as_with_the_vectors_from_the_state(
    service: CatalensService,
) -> None:
    collection, queries = _filled(service, service.embedder().identity.dim)
    assert collection.centering.current(collection.config.search.centering_min_queries) is not None
    lean = {
        "centred": _searched(collection, queries),
        "plain": _searched(collection, queries, center=False),
        "filtered": _searched(collection, queries, filters={"n": [0, 3, 4, 9, 12]}),
        "threshold": _searched(collection, queries, threshold=0.2),
    }
    store, facts = collection.store, collection.product_vectors
    collection.store = PlainStore(store)
    # No copy in memory either: the vectors come from the state's tables, read per search.
    collection.product_vectors = ProductVectors(collection.ledger, store.dim, memory_cap=0)
    try:
        before = {
            "centred": _searched(collection, queries),
            "plain": _searched(collection, queries, center=False),
            "filtered": _searched(collection, queries, filters={"n": [0, 3, 4, 9, 12]}),
            "threshold": _searched(collection, queries, threshold=0.2),
        }
    finally:
        collection.store, collection.product_vectors = store, facts
    # The same hits in the same order; centred scores computed on the server agree to float
    # precision (pgvector sums in float32), the others bit for bit.
    assert {key: [replace(h, score=0.0) for h in hits] for key, hits in lean.items()} == {
        key: [replace(h, score=0.0) for h in hits] for key, hits in before.items()
    }
    for key, hits in lean.items():
        scores = [h.score for h in before[key]]
        assert [h.score for h in hits] == pytest.approx(scores, abs=1e-5)
    assert [h.score for h in lean["plain"]] == [h.score for h in before["plain"]]
    assert lean["centred"] != lean["plain"]  # the re-scoring did move something
    assert {h.product_id for h in lean["filtered"]} <= {"p0", "p3", "p4", "p9", "p12"}
    assert all(h.image and h.title for h in lean["centred"])


def test_a_search_is_one_round_trip_and_sees_a_new_negative_at_once(
    service: CatalensService,
) -> None:
    """The change marker and the hit rows come with the candidates (centred or not); the
    marker is still read live: a negative added since the last search counts in the next."""
    collection, queries = _filled(service, service.embedder().identity.dim)
    store, ledger = collection.store, collection.ledger
    assert isinstance(store, PgVectorStore)
    collection.search(queries[0], top_k=5)  # warm: the store's row count is kept from here
    collection._checked = time.monotonic() + 3600  # no revisions check is due meanwhile
    checkouts: list[str] = []
    pools = {"store": store._pool, "state": ledger._pool}  # type: ignore[attr-defined]
    for name, pool in pools.items():
        taken = pool.connection

        def counted(*args: Any, _taken: Any = taken, _name: str = name, **kwargs: Any) -> Any:
            checkouts.append(_name)
            return _taken(*args, **kwargs)

        pool.connection = counted
    try:
        centred = collection.search(queries[1], top_k=5)
        assert checkouts == ["store"]
        plain = collection.search(queries[1], top_k=5, center=False)
        assert checkouts == ["store", "store"]
        assert centred != plain and all(h.title and h.image for h in centred + plain)
        top = plain[0]
        ledger.add_negative(top.product_id, queries[1])
        del checkouts[:]
        after = {h.product_id: h.score for h in collection.search(queries[1], center=False)}
        assert after.get(top.product_id, -1.0) < top.score - 0.1  # penalised at once
    finally:
        for pool in pools.values():
            del pool.connection


def test_centred_scores_from_the_server_are_the_python_ones(service: CatalensService) -> None:
    collection, queries = _filled(service, service.embedder().identity.dim)
    store = collection.store
    assert isinstance(store, PgVectorStore)
    mean = collection.centering.current(collection.config.search.centering_min_queries)
    assert mean is not None
    for query in queries[:6]:
        found = store.search_riding(query, 60, None, mean, 60)
        matches, vectors = store.search_with_vectors(query, 60)
        assert found.matches == matches and found.centred is not None
        expected = centered_scores(query, vectors, mean)
        assert found.centred == pytest.approx(expected.tolist(), abs=1e-5)
    # A candidate that is the mean itself scores 0, as ``l2_normalize`` makes it.
    store.upsert([77_777], ["mean"], mean[None, :])
    try:
        found = store.search_riding(queries[0], 200, None, mean, 200)  # every row
        assert found.centred is not None
        scores = {m.image_id: score for m, score in zip(found.matches, found.centred, strict=True)}
        assert len(scores) == 161 and scores[77_777] == 0.0
    finally:
        store.close()  # rolls the unflushed upsert back


_WRITER = """
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, sys.argv[1])
from fakes import build_fake_service, fake_settings

from catalens.ledger.state import ChangeSet, ImageChange
from catalens.types import Product

home, dsn, index, digest = sys.argv[2:6]
vector = np.asarray([float(v) for v in sys.argv[6].split(",")], np.float32)[None, :]
service, _ = build_fake_service(fake_settings(Path(home), store=dsn, index=index))
try:
    collection = service.collection("lean")
    collection.ledger.save_vectors([digest], vector)
    changes = ChangeSet()
    changes.products.append(Product(id="elsewhere", title="written elsewhere", images=("e.jpg",)))
    changes.images.append(ImageChange("elsewhere", "e.jpg", 0, digest, "ok"))
    collection.apply(changes)
finally:
    service.close()
"""


def test_a_write_through_another_process_is_counted_and_found(
    service: CatalensService, tmp_path: Path
) -> None:
    collection, queries = _filled(service, service.embedder().identity.dim)
    store = collection.store
    assert isinstance(store, PgVectorStore)
    before = len(store)
    assert before == 160  # 120 products, 40 with a second image
    collection.search(queries[0], top_k=5)  # the count is kept from here on
    target = queries[0]
    written = subprocess.run(
        [
            sys.executable,
            "-c",
            _WRITER,
            str(Path(__file__).resolve().parents[1]),
            str(tmp_path / "other-home"),
            service.settings.store,
            collection.config.index,
            "e" * 64,
            ",".join(repr(float(v)) for v in target),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert written.returncode == 0, written.stderr
    assert len(store) == before  # kept: nothing here has looked at the state since
    time.sleep(REFRESH_SECONDS)  # the next search is due to look
    hits = collection.search(target, top_k=5, center=False)
    assert hits[0].product_id == "elsewhere" and hits[0].title == "written elsewhere"
    assert len(store) == before + 1


def test_a_new_collection_re_ranks_fewer_candidates_on_postgresql(
    service: CatalensService, make_fake_service: Any, tmp_path: Path
) -> None:
    on_postgres = service.create_collection("deep").config.search
    faiss = make_fake_service(home=tmp_path / "faiss", centering=True, aggregation="blend")
    on_faiss = faiss.create_collection("deep").config.search
    assert on_postgres.rerank_depth == POSTGRES_RERANK_DEPTH < on_faiss.rerank_depth == 512
    assert replace(on_postgres, rerank_depth=512) == on_faiss  # nothing else differs


def test_hit_rows_are_what_products_and_previews_read(service: CatalensService) -> None:
    collection, _ = _filled(service, service.embedder().identity.dim)
    ledger = collection.ledger
    assert isinstance(ledger, ReadsHitRows)
    products = ["p0", "p3", "p3", "missing"]
    images = [i.image_id for i in ledger.searchable_images()[:6]] + [999_999]
    assert ledger.hit_rows(products, images) == (
        ledger.get_products(products),
        ledger.previews(images),
    )
    assert ledger.hit_rows([], []) == ({}, {})


def test_pooled_connections_search_at_the_store_ef_search(pg_dsn: str) -> None:
    vectors = _unit(np.random.default_rng(1).standard_normal((40, 8)))
    with fresh_database(pg_dsn) as dsn, PgVectorStore(dsn, "ef", 8, m=4, ef_search=23) as store:
        store.upsert(list(range(40)), [f"p{i}" for i in range(40)], vectors)
        store.flush("1")
        assert len(store.search(vectors[:1], 5)[0]) == 5  # one statement, at the session's 23
        assert len(store.search(vectors[:1], 30)[0]) == 30  # ef_search 30 for that search alone
        with store._pool.connection() as conn:  # the session's own setting, not the last search's
            assert conn.execute("SHOW hnsw.ef_search").fetchone() == ("23",)


def test_a_pooled_connection_is_checked_only_after_it_sat_idle(pg_dsn: str) -> None:
    conn = psycopg.connect(pg_dsn, autocommit=True)
    try:
        eager, lazy = IdleCheck(idle_seconds=0.0), IdleCheck(idle_seconds=3600.0)
        conn.autocommit = False  # as a writer leaves it
        lazy.reset(conn)
        assert conn.autocommit
        eager.reset(conn)
        eager.check(conn)  # alive
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        lazy.check(conn)  # used a moment ago: not asked
        with pytest.raises(psycopg.OperationalError):
            eager.check(conn)
        with pytest.raises(psycopg.OperationalError):
            IdleCheck(idle_seconds=3600.0).check(conn)  # never seen: asked
    finally:
        conn.close()


def test_with_centring_off_a_plain_collection_asks_for_the_hits_alone(
    service: CatalensService,
) -> None:
    """One image per product, no negatives: the store's top_k are the hits, so that is all a
    search without centring asks for, and it finds what the usual depth finds. A negative
    added since (the facts read with the candidates are not plain) makes it ask again."""
    rng = np.random.default_rng(3)
    collection, vectors = _plain(service, rng)
    dim = collection.config.model.dim
    store = collection.store
    assert isinstance(store, PgVectorStore)
    asked: list[int] = []
    riding = store.search_riding

    def counted(*args: Any) -> Any:
        asked.append(args[1])
        return riding(*args)

    store.search_riding = counted  # type: ignore[method-assign]
    try:
        queries = _unit(vectors[:4] + 0.3 * rng.standard_normal((4, dim)))
        collection.search(queries[0], top_k=5, center=False)  # the facts are known from here
        for query in queries:
            del asked[:]
            shallow = collection.search(query, top_k=5, center=False)
            assert asked == [5]
            usual = collection.search(query, top_k=5, center=False, threshold=-1.0)
            assert asked == [5, 32] and shallow == usual
        collection.ledger.add_negative("p0", queries[1])
        del asked[:]
        after = collection.search(queries[0], top_k=5, center=False)
        assert asked == [5, 32]
        assert after == collection.search(queries[0], top_k=5, center=False, threshold=-1.0)
    finally:
        del store.search_riding


def test_a_centred_search_of_a_plain_collection_reads_the_hit_rows_it_shows(
    service: CatalensService,
) -> None:
    """Centred, each product one image and nothing narrowing: the hits shown are the best
    top_k by centred score, so only their hit rows ride the statement, and the hits are those
    found when twice as many ride. A collection with several images per product (``_filled``)
    still reads twice as many."""
    rng = np.random.default_rng(5)
    collection, vectors = _plain(service, rng)
    dim = collection.config.model.dim
    for query in _unit(rng.standard_normal((10, dim))):  # centring is on from here
        collection.observe_query(query)
    store = collection.store
    assert isinstance(store, PgVectorStore)
    rows: list[int] = []
    doubled = False
    riding = store.search_riding

    def counted(*args: Any) -> Any:
        rows.append(args[4])
        return riding(*args[:4], args[4] * 2 if doubled else args[4])

    store.search_riding = counted  # type: ignore[method-assign]
    try:
        queries = _unit(vectors[:6] + 0.5 * rng.standard_normal((6, dim)))
        collection.search(queries[0], top_k=5)  # the facts are known from here
        for query in queries:
            del rows[:]
            doubled = False
            lean = collection.search(query, top_k=5)
            doubled = True
            wide = collection.search(query, top_k=5)
            assert rows == [5, 5]  # one statement each, the hit rows of 5 asked for
            assert lean == wide and len(lean) == 5 and all(h.title and h.image for h in lean)
            assert lean != collection.search(query, top_k=5, center=False)  # centred
    finally:
        del store.search_riding
    several, queries = _filled(service, dim)
    assert isinstance(several.store, PgVectorStore)
    riding = several.store.search_riding
    several.store.search_riding = counted  # type: ignore[method-assign]
    try:
        doubled = False
        several.search(queries[0], top_k=5)
        del rows[:]
        several.search(queries[1], top_k=5)
        assert rows == [10]
    finally:
        del several.store.search_riding
