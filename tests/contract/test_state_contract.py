"""One suite, every CollectionState: what a collection persists besides its vector index.

An implementation joins by adding a ``StateKind`` to ``STATE_KINDS``. ``open`` must reopen
the same state when called again with the same folder (an implementation on a server can
derive its key from it), so the suite also checks that what was written survives a reopen.
The PostgreSQL kind runs on the session's real server (``pg_dsn``), one database per module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catalens.errors import CollectionNotFoundError
from catalens.ledger.sqlite import SqliteState
from catalens.ledger.state import (
    CATALOG,
    CONFIRMED,
    ChangeSet,
    CollectionState,
    ImageChange,
    PhotoProvenance,
    PreviewImage,
)
from catalens.types import Product

DIM = 4


@dataclass(frozen=True)
class StateKind:
    name: str
    open: Callable[[Path], CollectionState]
    postgres: bool = False


_PG: dict[str, Any] = {"database": None}
"""The module's ``PgDatabase`` (put here by ``opener`` for the postgres kind)."""


def _postgres(directory: Path) -> CollectionState:
    """The state of the collection named after ``directory``: made on first open."""
    database = _PG["database"]
    assert database is not None, "the postgres kind needs the pg_database fixture"
    name = "contract-" + hashlib.sha1(str(directory).encode()).hexdigest()[:12]
    try:
        state: CollectionState = database.open(name)
    except CollectionNotFoundError:
        state = database.create(name)
    return state


STATE_KINDS = [StateKind("sqlite", SqliteState), StateKind("postgres", _postgres, postgres=True)]


@pytest.fixture(scope="module")
def pg_database(pg_dsn: str) -> Iterator[Any]:
    from catalens.ledger.pg_registry import PgDatabase
    from pgdb import fresh_database

    with fresh_database(pg_dsn) as dsn:
        database = PgDatabase(dsn)
        yield database
        database.close()


class Opener:
    """Opens (and reopens) one state in one folder; closes every state it opened."""

    def __init__(self, kind: StateKind, directory: Path) -> None:
        self.kind, self.directory = kind, directory
        self.opened: list[CollectionState] = []

    def __call__(self) -> CollectionState:
        state = self.kind.open(self.directory)
        self.opened.append(state)
        return state

    def reopen(self, state: CollectionState) -> CollectionState:
        state.close()
        self.opened.remove(state)
        return self()


@pytest.fixture(
    params=[
        pytest.param(k, id=k.name, marks=[pytest.mark.postgres] if k.postgres else [])
        for k in STATE_KINDS
    ]
)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    if request.param.postgres:
        _PG["database"] = request.getfixturevalue("pg_database")
    result = Opener(request.param, tmp_path / "shop")
    result.directory.mkdir()
    yield result
    for state in result.opened:
        state.close()


@pytest.fixture
def state(opener: Opener) -> CollectionState:
    return opener()


def vec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def image(product_id: str, ref: str, position: int, digest: str) -> ImageChange:
    """A product image that was read and embedded."""
    return ImageChange(product_id, ref, position, digest, "ok")


def catalog(state: CollectionState) -> dict[str, int]:
    """Two products with three product images (one failed) and their vectors; ref -> id."""
    state.save_vectors(["h1", "h2", "h3"], np.eye(3, DIM, dtype=np.float32))
    state.apply(
        ChangeSet(
            products=[
                Product("p1", "One", ("a.jpg", "b.jpg"), {"brand": "X", "size": 2}),
                Product("p2", "Two", ("c.jpg", "bad.jpg"), {}),
            ],
            images=[
                image("p1", "b.jpg", 1, "h2"),
                image("p1", "a.jpg", 0, "h1"),
                image("p2", "c.jpg", 0, "h3"),
                ImageChange("p2", "bad.jpg", 1, None, "failed", error="HTTP 404"),
            ],
        )
    )
    return {key[1]: row.image_id for key, row in state.all_images().items()}


def confirm(
    state: CollectionState, product_id: str, digest: str, *, query: np.ndarray | None = None
) -> str:
    """Make a confirmed photo of ``product_id`` with content ``digest``; its ref."""
    ref = f"views/{digest}.jpg"
    state.save_photo(ref, f"bytes of {digest}".encode())
    if not state.known_hashes([digest]):
        state.save_vectors([digest], vec(0, 0, 0, 1).reshape(1, -1))
    made = PhotoProvenance("correct", 123.0, user="ann", query_id="q1", query_vector=query)
    state.apply(
        ChangeSet(
            images=[
                ImageChange(
                    product_id, ref, 1_000_000, digest, "ok", origin=CONFIRMED, provenance=made
                )
            ]
        )
    )
    return ref


# -- products and images -------------------------------------------------------------------


def test_products_and_images_round_trip(opener: Opener, state: CollectionState) -> None:
    ids = catalog(state)
    state = opener.reopen(state)
    assert state.product_ids() == {"p1", "p2"}
    one = state.get_product("p1")
    assert one == Product("p1", "One", ("a.jpg", "b.jpg"), {"brand": "X", "size": 2})
    assert state.get_product("nope") is None
    assert state.get_products(["p2", "nope", "p2"]) == {"p2": ("Two", {})}
    assert [p.id for p in state.iter_products()] == ["p1", "p2"]
    assert [p.id for p in state.iter_products(offset=1, limit=5)] == ["p2"]
    assert [r.ref for r in state.images_of("p1")] == ["a.jpg", "b.jpg"]
    row = state.image(ids["c.jpg"])
    assert row is not None
    assert (row.product_id, row.ref, row.origin, row.content_hash, row.status) == (
        "p2",
        "c.jpg",
        CATALOG,
        "h3",
        "ok",
    )
    assert state.image(10_000) is None
    assert set(state.all_images()) == {
        ("p1", "a.jpg"),
        ("p1", "b.jpg"),
        ("p2", "c.jpg"),
        ("p2", "bad.jpg"),
    }
    assert [(f.product_id, f.ref, f.error) for f in state.failed_images()] == [
        ("p2", "bad.jpg", "HTTP 404")
    ]
    searchable = state.searchable_images()
    assert [s.image_id for s in searchable] == sorted(ids[r] for r in ("a.jpg", "b.jpg", "c.jpg"))
    assert {(s.product_id, s.content_hash, s.origin) for s in searchable} == {
        ("p1", "h1", CATALOG),
        ("p1", "h2", CATALOG),
        ("p2", "h3", CATALOG),
    }
    assert state.counts() == {"products": 2, "images": 3, "failed_images": 1, "confirmed_views": 0}


def test_an_ok_image_without_content_is_not_searchable(state: CollectionState) -> None:
    state.apply(
        ChangeSet(products=[Product("p", "P", ())], images=[ImageChange("p", "x", 0, None, "ok")])
    )
    assert state.searchable_images() == []
    assert state.counts()["images"] == 0


# -- apply ---------------------------------------------------------------------------------


def test_apply_says_what_the_store_must_do_and_bumps_the_generation(
    opener: Opener, state: CollectionState
) -> None:
    assert state.generation == 0
    ids = catalog(state)
    assert state.generation == 1
    state.save_vectors(["h4"], vec(1, 1, 0, 0).reshape(1, -1))
    applied = state.apply(
        ChangeSet(
            images=[
                image("p1", "a.jpg", 0, "h1"),  # unchanged: nothing to do
                image("p1", "b.jpg", 1, "h4"),  # new content: upsert
                ImageChange("p2", "c.jpg", 0, None, "failed", error="gone"),  # delete
                image("p2", "bad.jpg", 1, "h4"),  # fixed: upsert
            ],
            removed_images=[("p1", "a.jpg"), ("p1", "never.jpg")],
        )
    )
    assert applied.generation == 2 == state.generation
    assert sorted(applied.upserts) == sorted(
        [(ids["b.jpg"], "p1", "h4"), (ids["bad.jpg"], "p2", "h4")]
    )
    assert sorted(applied.deletes) == sorted([ids["c.jpg"], ids["a.jpg"]])
    assert state.get_product("p1") is not None
    assert [r.ref for r in state.images_of("p1")] == ["b.jpg"]
    # The image id of a (product, ref) is stable across updates.
    assert state.all_images()[("p2", "bad.jpg")].image_id == ids["bad.jpg"]
    removed = state.apply(ChangeSet(removed_products=["p2"]))
    assert set(removed.deletes) == {ids["c.jpg"], ids["bad.jpg"]} and removed.upserts == ()
    state = opener.reopen(state)
    assert state.generation == 3
    assert state.product_ids() == {"p1"}


def test_an_exception_mid_apply_leaves_nothing(state: CollectionState) -> None:
    catalog(state)
    marker = state.change_marker()
    with pytest.raises(Exception):  # noqa: B017 (each implementation raises its own driver's error)
        state.apply(
            ChangeSet(
                products=[Product("p3", "Three", ())],
                images=[image("p3", "d.jpg", 0, "h1"), image("ghost", "e.jpg", 0, "h1")],
                removed_products=["p1"],
            )
        )
    assert state.product_ids() == {"p1", "p2"}
    assert state.generation == 1 and state.change_marker() == marker
    assert state.counts()["images"] == 3


# -- vectors -------------------------------------------------------------------------------


def test_vector_cache(state: CollectionState) -> None:
    ids = catalog(state)
    assert state.known_hashes(["h1", "h3", "zz"]) == {"h1", "h3"}
    np.testing.assert_array_equal(
        state.vectors_for(["h3", "h1", "h3"], DIM), np.eye(3, DIM, dtype=np.float32)[[2, 0, 2]]
    )
    np.testing.assert_array_equal(
        state.vectors_of_images([ids["c.jpg"], ids["a.jpg"]], DIM),
        np.eye(3, DIM, dtype=np.float32)[[2, 0]],
    )
    grouped = state.vectors_by_product(["p1", "p2", "nope"], DIM)
    assert sorted(grouped) == ["p1", "p2"]
    # In image id order: b.jpg was written first.
    np.testing.assert_array_equal(grouped["p1"], np.eye(3, DIM, dtype=np.float32)[[1, 0]])
    # Saving a hash again replaces its vector; unreferenced vectors are pruned.
    state.save_vectors(["h3", "orphan"], np.ones((2, DIM), dtype=np.float32))
    np.testing.assert_array_equal(state.vectors_for(["h3"], DIM), np.ones((1, DIM)))
    assert state.prune_vectors() == 1
    assert state.known_hashes(["orphan", "h1"]) == {"h1"}


# -- confirmed photos ------------------------------------------------------------------------


def test_confirmed_photos_and_their_provenance(opener: Opener, state: CollectionState) -> None:
    ids = catalog(state)
    ref = confirm(state, "p2", "photo1", query=vec(0.5, 0.5, 0.5, 0.5))
    confirm(state, "p1", "photo2")
    state = opener.reopen(state)
    (first,) = state.confirmed_photos("p2")
    assert (first.product_id, first.ref, first.content_hash) == ("p2", ref, "photo1")
    assert (first.verdict, first.created_at, first.user, first.query_id) == (
        "correct",
        123.0,
        "ann",
        "q1",
    )
    assert [p.content_hash for p in state.confirmed_photos()] == ["photo1", "photo2"]
    assert [p.product_id for p in state.confirmed_photos(content_hash="photo2")] == ["p1"]
    assert state.confirmed_photos("p1", content_hash="photo1") == []
    assert state.confirmed_count() == 2
    assert state.counts()["confirmed_views"] == 2
    queries = state.confirmed_queries()
    assert list(queries) == [first.image_id]
    np.testing.assert_array_equal(queries[first.image_id], vec(0.5, 0.5, 0.5, 0.5))
    assert {s.image_id for s in state.searchable_images() if s.origin == CONFIRMED} == {
        p.image_id for p in state.confirmed_photos()
    }
    # A result matched by a confirmed photo shows its product's first product image.
    previews = state.previews([first.image_id, ids["b.jpg"], 10_000])
    assert previews == {
        first.image_id: PreviewImage(ids["c.jpg"], "c.jpg"),
        ids["b.jpg"]: PreviewImage(ids["b.jpg"], "b.jpg"),
    }
    assert state.get_product("p2") == Product("p2", "Two", ("c.jpg", "bad.jpg"), {})


def test_a_confirmed_photo_of_a_product_without_product_images_has_no_preview(
    state: CollectionState,
) -> None:
    state.apply(ChangeSet(products=[Product("p", "P", ())]))
    confirm(state, "p", "photo")
    (photo,) = state.confirmed_photos()
    assert state.previews([photo.image_id]) == {}


def test_photo_bytes_live_while_an_image_refers_to_them(state: CollectionState) -> None:
    catalog(state)
    assert state.photo_bytes("views/none.jpg") is None
    ref = confirm(state, "p1", "photo")
    state.save_photo(ref, b"other bytes")  # the same ref again keeps the first bytes
    assert state.photo_bytes(ref) == b"bytes of photo"
    # Moved to another product in one step: still referred to, still there.
    (photo,) = state.confirmed_photos()
    state.apply(
        ChangeSet(
            images=[ImageChange("p2", ref, 1_000_000, "photo", "ok", origin=CONFIRMED)],
            removed_images=[("p1", ref)],
        )
    )
    assert state.photo_bytes(ref) == b"bytes of photo"
    (moved,) = state.confirmed_photos()
    assert moved.product_id == "p2" and moved.image_id != photo.image_id
    state.apply(ChangeSet(removed_images=[("p2", ref)]))
    assert state.photo_bytes(ref) is None
    assert state.confirmed_photos() == [] and state.confirmed_count() == 0


# -- negatives -------------------------------------------------------------------------------


def test_negatives_go_with_their_product(state: CollectionState) -> None:
    catalog(state)
    marker = state.change_marker()
    first = state.add_negative("p1", vec(1, 0, 0, 0), content_hash="q", user="bo", query_id="x")
    second = state.add_negative("p2", vec(0, 1, 0, 0))
    assert first != second
    assert state.change_marker() != marker
    negatives = state.negatives()
    assert [(n.negative_id, n.product_id) for n in negatives] == [(first, "p1"), (second, "p2")]
    assert (negatives[0].content_hash, negatives[0].user, negatives[0].query_id) == ("q", "bo", "x")
    assert negatives[0].created_at > 0
    np.testing.assert_array_equal(negatives[0].vector, vec(1, 0, 0, 0))
    assert (state.negative_count(), state.negative_count("p1"), state.negative_count("p9")) == (
        2,
        1,
        0,
    )
    ref = confirm(state, "p1", "photo")
    marker = state.change_marker()
    state.apply(ChangeSet(removed_products=["p1"]))
    assert state.change_marker() != marker
    assert [n.product_id for n in state.negatives()] == ["p2"]
    assert state.confirmed_photos() == [] and state.confirmed_queries() == {}
    assert state.photo_bytes(ref) is None


# -- pending verdicts ------------------------------------------------------------------------


def test_pending_verdicts_wait_with_their_photo_and_go_with_their_product(
    opener: Opener, state: CollectionState
) -> None:
    catalog(state)
    generation = state.generation
    first = state.add_pending(
        "p1",
        "actually",
        photo=b"photo one",
        content_hash="ph1",
        client="10.0.0.1",
        query_vector=vec(1, 0, 0, 0),
        plain_vector=vec(0, 1, 0, 0),
        user="ann",
        query_id="q1",
    )
    second = state.add_pending(
        "p2",
        "wrong",
        photo=b"photo two",
        content_hash="ph2",
        client="10.0.0.2",
        query_vector=vec(0, 0, 1, 0),
        plain_vector=vec(0, 0, 0, 1),
    )
    assert first != second
    # Recording a verdict changes nothing searchable.
    assert state.generation == generation and state.confirmed_count() == 0
    state = opener.reopen(state)
    rows = state.pending_verdicts()
    assert [(r.pending_id, r.product_id, r.verdict, r.client) for r in rows] == [
        (first, "p1", "actually", "10.0.0.1"),
        (second, "p2", "wrong", "10.0.0.2"),
    ]
    one = rows[0]
    assert (one.content_hash, one.user, one.query_id) == ("ph1", "ann", "q1")
    assert (rows[1].user, rows[1].query_id) == (None, None)
    assert one.created_at > 0
    np.testing.assert_array_equal(one.query_vector, vec(1, 0, 0, 0))
    np.testing.assert_array_equal(one.plain_vector, vec(0, 1, 0, 0))
    assert [r.pending_id for r in state.pending_verdicts("p2")] == [second]
    assert [r.pending_id for r in state.pending_verdicts(content_hash="ph1")] == [first]
    assert state.pending_verdicts("p1", content_hash="ph2") == []
    assert state.pending_photo(first) == b"photo one"
    assert state.pending_photo(second + 1000) is None
    assert state.pending_count() == 2
    assert state.remove_pending([first, second + 1000]) == 1
    assert state.remove_pending([]) == 0
    assert state.pending_photo(first) is None
    assert state.pending_count() == 1
    state.apply(ChangeSet(removed_products=["p2"]))
    assert state.pending_verdicts() == [] and state.pending_count() == 0


# -- config and small documents ----------------------------------------------------------------


def test_config_and_documents_round_trip(opener: Opener, state: CollectionState) -> None:
    assert state.config() is None
    assert (state.calibration(), state.domain_mean(), state.last_sync()) == (None, None, None)
    config = {"name": "shop", "model": {"dim": 4, "preprocessing": {"size": [224, 224]}}, "x": None}
    state.set_config(config)
    state.set_calibration({"weights": [0.1, 0.2], "source": "catalog"})
    state.set_domain_mean({"count": 3, "mean": [0.25, 0.5]})
    state.set_last_sync({"finished_at": 12.5, "errors": ["a"]})
    assert state.synthetic_views() is None
    views = {"recipe": "r", "dim": 4, "products": {"p1": {"hash": "h", "vectors": "AAAA"}}}
    state.set_synthetic_views(views)
    state = opener.reopen(state)
    assert state.synthetic_views() == views
    assert state.config() == config
    assert state.calibration() == {"weights": [0.1, 0.2], "source": "catalog"}
    assert state.domain_mean() == {"count": 3, "mean": [0.25, 0.5]}
    assert state.last_sync() == {"finished_at": 12.5, "errors": ["a"]}
    state.set_config({**config, "name": "other"})
    state.set_calibration(None)
    state.checkpoint()
    state = opener.reopen(state)
    assert state.config() == {**config, "name": "other"}
    assert state.calibration() is None
    # Documents are not part of what is searchable.
    assert state.generation == 0


# -- more than one handle (processes, replicas) ----------------------------------------------


def test_what_one_handle_commits_the_other_sees(opener: Opener, state: CollectionState) -> None:
    other = opener()  # a second handle on the same state, as another process would open it
    marker = other.change_marker()
    ids = catalog(state)
    assert other.generation == state.generation == 1
    assert other.change_marker() != marker
    assert other.product_ids() == {"p1", "p2"}
    assert other.image(ids["a.jpg"]) == state.image(ids["a.jpg"])
    ref = confirm(other, "p1", "photo")
    assert state.photo_bytes(ref) == b"bytes of photo"
    assert [p.ref for p in state.confirmed_photos()] == [ref]
    state.set_calibration({"weights": [1.0]})
    assert other.calibration() == {"weights": [1.0]}


def test_iter_products_pages_in_byte_order(state: CollectionState) -> None:
    ids = ["b", "B", "a", "_x", "a-1", "a_1", "Z"]
    state.apply(ChangeSet(products=[Product(i, i.upper(), ()) for i in ids]))
    assert [p.id for p in state.iter_products()] == sorted(ids)
    assert [p.id for p in state.iter_products(offset=2, limit=3)] == sorted(ids)[2:5]


def test_products_with_several_images_counts_searchable_catalog_images(
    state: CollectionState,
) -> None:
    catalog(state)  # p1 has two searchable images, p2 one and a failed one
    assert state.products_with_several_images() == 1
    confirm(state, "p2", "h9")  # a confirmed photo is not a catalog image
    assert state.products_with_several_images() == 1


def test_find_products_matches_id_or_title_in_any_case_and_pages(state: CollectionState) -> None:
    titles = {"b": "Green Apple", "B": "Pear", "a": "Äpfel", "a-1": "APPLE juice", "z": "Milk"}
    state.apply(ChangeSet(products=[Product(i, t, ()) for i, t in titles.items()]))
    assert state.find_products("", offset=0, limit=10) == (5, sorted(titles))
    assert state.find_products("  apple ", offset=0, limit=10) == (2, ["a-1", "b"])
    assert state.find_products("äpf", offset=0, limit=10) == (1, ["a"])
    assert state.find_products("A", offset=0, limit=2) == (4, ["B", "a"])  # "b": Green Apple
    assert state.find_products("A", offset=2, limit=2) == (4, ["a-1", "b"])
    assert state.find_products("A", offset=9, limit=2) == (4, [])
    assert state.find_products("100%", offset=0, limit=10) == (0, [])


def test_a_resync_of_the_same_catalog_changes_nothing_searchable(state: CollectionState) -> None:
    catalog(state)
    before = (state.searchable_images(), state.all_images())
    applied = state.apply(
        ChangeSet(
            products=[Product("p1", "One", ("a.jpg", "b.jpg"), {"brand": "X", "size": 2})],
            images=[image("p1", "a.jpg", 0, "h1"), image("p1", "b.jpg", 1, "h2")],
        )
    )
    assert (applied.upserts, applied.deletes, applied.generation) == ((), (), 2)
    assert (state.searchable_images(), state.all_images()) == before
