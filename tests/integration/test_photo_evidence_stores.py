"""Confirmed photos scored as evidence (``photo_scoring="evidence"``) through a real
collection, on FAISS with the sqlite state and on PostgreSQL: the same construct ranks the
same way with the same scores, and the default (``views``) still lets the photo win."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from catalens.collection.collection import Collection
from catalens.ledger.state import CONFIRMED, ChangeSet, ImageChange, PhotoProvenance
from catalens.service.service import CatalensService
from catalens.types import Product
from pgdb import fresh_database

# Axis 0: what shop photos share (shelf, hands); axes 1-3: products a, b, c.
CATALOG = {"a": [0.0, 1.0, 0.0, 0.0], "b": [0.0, 0.0, 1.0, 0.0], "c": [0.0, 0.0, 0.0, 1.0]}
PHOTOS = {"a": [0.8, 0.6, 0.0, 0.0], "c": [0.8, 0.0, 0.0, 0.6]}
QUERY_OF_B = [0.85, 0.3, 0.43, 0.0]  # closer to a's shop photo than to b's catalog image


def _vector(head: list[float], dim: int) -> NDArray[np.float32]:
    vector = np.zeros(dim, dtype=np.float32)
    vector[: len(head)] = head
    unit: NDArray[np.float32] = vector / np.linalg.norm(vector)
    return unit


def _fill(service: CatalensService, name: str) -> Collection:
    collection = service.create_collection(name)
    dim = collection.config.model.dim
    changes = ChangeSet()
    hashes, vectors = [], []
    for pid, head in CATALOG.items():
        changes.products.append(Product(id=pid, title=pid, images=(f"{pid}.jpg",)))
        changes.images.append(ImageChange(pid, f"{pid}.jpg", 0, f"{pid:0>64}", "ok"))
        hashes.append(f"{pid:0>64}")
        vectors.append(_vector(head, dim))
    for pid, head in PHOTOS.items():
        digest = f"{pid:f>64}"
        provenance = PhotoProvenance("correct", 0.0, query_vector=_vector(head, dim))
        changes.images.append(
            ImageChange(
                pid, f"views/{digest}.jpg", 1_000_000, digest, "ok",
                origin=CONFIRMED, provenance=provenance,
            )
        )  # fmt: skip
        hashes.append(digest)
        vectors.append(_vector(head, dim))
    collection.ledger.save_vectors(hashes, np.vstack(vectors))
    collection.apply(changes)
    return collection


@pytest.fixture(params=["faiss", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "faiss":
        yield "faiss"
        return
    with fresh_database(request.getfixturevalue("pg_dsn")) as dsn:
        yield dsn


def _ranking(collection: Collection) -> list[tuple[str, float]]:
    query = _vector(QUERY_OF_B, collection.config.model.dim)
    hits = collection.search(query, top_k=3, center=False)
    return [(hit.product_id, round(hit.score, 5)) for hit in hits]


def test_a_fed_products_shop_photo_does_not_take_another_products_query(
    store: str, make_fake_service: Any, tmp_path: Path
) -> None:
    made = make_fake_service(home=tmp_path / "e", store=store, photo_scoring="evidence")
    evidence = _fill(made, "evidence")
    views = _fill(make_fake_service(home=tmp_path / "v", store=store), "views")
    assert evidence.config.search.photo_scoring == "evidence"
    ranked = _ranking(evidence)
    assert ranked[0][0] == "b"
    # b has no photos: its score is its catalog cosine (no centring here).
    assert ranked[0][1] == pytest.approx(0.43 / np.linalg.norm(QUERY_OF_B), abs=1e-4)
    # Scored as more views of a (the default), a's shop photo takes the query.
    assert _ranking(views)[0][0] == "a"


@pytest.fixture
def pg_store(pg_dsn: str) -> Iterator[str]:
    """A fresh database, dropped after the services made in the test are closed (set up
    first, so torn down last)."""
    with fresh_database(pg_dsn) as dsn:
        yield dsn


def test_faiss_and_postgres_score_alike(
    pg_store: str, make_fake_service: Any, tmp_path: Path
) -> None:
    made = make_fake_service(home=tmp_path / "p", store=pg_store, photo_scoring="evidence")
    on_pg = _fill(made, "shop")
    on_faiss = _fill(make_fake_service(home=tmp_path / "f", photo_scoring="evidence"), "shop")
    assert _ranking(on_pg) == _ranking(on_faiss)
