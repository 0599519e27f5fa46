"""A collection over its state and a FAISS store, with hand-made vectors (no model): the
config goes through the state, the store follows the state's generation, and each hit
carries the id of the image it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalens.collection.collection import Collection, copy_collection_dir, remove_collection_dir
from catalens.collection.config import CollectionConfig
from catalens.errors import CollectionNotFoundError
from catalens.ledger.state import CONFIRMED, ChangeSet, ImageChange, PhotoProvenance
from catalens.search.query_crops import SearchOptions
from catalens.stores.base import VectorStore
from catalens.stores.faiss_store import FaissOptions, FaissStore
from catalens.types import ModelIdentity, Product

DIM = 4
CONFIG = CollectionConfig(
    name="shop",
    model_spec="hand-made",
    model=ModelIdentity("hand-made", "1", DIM, {}),
    search=SearchOptions(centering=False, aggregation="max", negative_penalty=0.0),
)


def faiss(config: CollectionConfig, directory: Path) -> VectorStore:
    return FaissStore.open(directory / "faiss", dim=config.model.dim, options=FaissOptions())


def _filled(directory: Path) -> Collection:
    """Products p1 (two product images) and p2 (one); p2 also has a confirmed photo."""
    collection = Collection.create(directory, CONFIG, faiss)
    collection.ledger.save_vectors(["h1", "h2", "h3", "photo"], np.eye(4, dtype=np.float32))
    collection.apply(
        ChangeSet(
            products=[Product("p1", "One", ("a.jpg", "b.jpg")), Product("p2", "Two", ("c.jpg",))],
            images=[
                ImageChange("p1", "a.jpg", 0, "h1", "ok"),
                ImageChange("p1", "b.jpg", 1, "h2", "ok"),
                ImageChange("p2", "c.jpg", 0, "h3", "ok"),
            ],
        )
    )
    collection.ledger.save_photo("views/photo.jpg", b"photo bytes")
    collection.apply(
        ChangeSet(
            images=[
                ImageChange(
                    "p2",
                    "views/photo.jpg",
                    1_000_000,
                    "photo",
                    "ok",
                    origin=CONFIRMED,
                    provenance=PhotoProvenance("correct", 1.0),
                )
            ]
        )
    )
    return collection


def test_each_hit_carries_the_id_of_the_image_it_shows(tmp_path: Path) -> None:
    collection = _filled(tmp_path / "shop")
    ids = {row.ref: row.image_id for row in collection.ledger.all_images().values()}
    try:
        (hit,) = collection.search(np.array([0, 1, 0, 0], dtype=np.float32), top_k=1)
        assert (hit.product_id, hit.image, hit.image_id) == ("p1", "b.jpg", ids["b.jpg"])
        # Matched by the confirmed photo: the hit shows p2's product image, and its id.
        (hit,) = collection.search(np.array([0, 0, 0, 1], dtype=np.float32), top_k=1)
        assert (hit.product_id, hit.image, hit.image_id) == ("p2", "c.jpg", ids["c.jpg"])
        assert "image_id" not in hit.to_dict()  # the CLI's JSON is unchanged
    finally:
        collection.close()


def test_open_reads_the_config_from_the_state_and_rebuilds_a_lagging_store(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "shop"
    collection = _filled(directory)
    # A crash between the two halves of ``Collection.apply``: the state committed, the
    # store never heard of it.
    collection.ledger.apply(ChangeSet(removed_products=["p1"]))
    collection.close()
    assert FaissStore.open(directory / "faiss", dim=DIM, options=FaissOptions()).generation() == "2"
    reopened = Collection.open(directory, faiss)
    try:
        assert reopened.config == CONFIG
        assert reopened.store.generation() == str(reopened.ledger.generation) == "3"
        assert len(reopened.store) == 2
        assert {h.product_id for h in reopened.search(np.ones(DIM, np.float32), top_k=5)} == {"p2"}
    finally:
        reopened.close()


def test_copy_renames_and_remove_deletes(tmp_path: Path) -> None:
    _filled(tmp_path / "shop").close()
    copy_collection_dir(tmp_path / "shop", tmp_path / "copy", "copy")
    copied = Collection.open(tmp_path / "copy", faiss)
    try:
        assert copied.name == "copy" and copied.ledger.product_ids() == {"p1", "p2"}
        assert copied.ledger.photo_bytes("views/photo.jpg") == b"photo bytes"
    finally:
        copied.close()
    remove_collection_dir(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    with pytest.raises(CollectionNotFoundError):
        Collection.open(tmp_path / "copy", faiss)
