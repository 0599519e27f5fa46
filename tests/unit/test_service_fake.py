"""Service and collection logic on the fake embedder (``tests/fakes.py``), in seconds:
collections (create, ingest, incremental re-ingest, removal), upserts and deletes, search
ranking and filters, and a store that lags its ledger. Retrieval quality is measured with
the real model elsewhere (tests/e2e); here the numbers are checked against brute force."""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from catalens.collection.config import SourceConfig
from catalens.embedders.base import embed_images
from catalens.errors import CatalensError, CollectionNotFoundError, ModelMismatchError
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import CatalensService
from catalens.types import Hit, Product
from fakes import FakeEmbedder, build_fake_service, fake_settings

SAMPLE_PRODUCTS = 8


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("fake-sample"), products=SAMPLE_PRODUCTS)


@pytest.fixture
def root(sample: SampleCatalog, tmp_path: Path) -> Path:
    """A private copy of the sample catalog, free to change."""
    return Path(shutil.copytree(sample.root, tmp_path / "catalog"))


def _source(root: Path, name: str = "catalog.csv") -> SourceConfig:
    return SourceConfig(location=str(root / name))


def _moved(path: Path, sample: SampleCatalog, root: Path) -> Path:
    return root / path.relative_to(sample.root)


def _total_images(sample: SampleCatalog) -> int:
    return sum(len(p.images) for p in sample.products)


def _catalog_vectors(
    embedder: FakeEmbedder, sample: SampleCatalog
) -> dict[str, NDArray[np.float32]]:
    """product id -> the (n, d) vectors of its catalog images, embedded straight from files."""
    return {
        p.id: embed_images(embedder, [Image.open(path).convert("RGB") for path in p.images])
        for p in sample.products
    }


def _brute_force(
    query: NDArray[np.float32], vectors: dict[str, NDArray[np.float32]]
) -> list[tuple[str, float]]:
    """Products by their best image's cosine to ``query``, best first."""
    scores = [(pid, float((rows @ query).max())) for pid, rows in vectors.items()]
    return sorted(scores, key=lambda item: -item[1])


def _ranked(hits: list[Hit]) -> list[tuple[str, float]]:
    return [(h.product_id, round(h.score, 5)) for h in hits]


def _without_product(root: Path, product_id: str, name: str = "smaller.csv") -> Path:
    with (root / "catalog.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    target = root / name
    with target.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(row for row in rows if row[0] != product_id)
    return target


@pytest.fixture
def shop(fake_service: CatalensService, sample: SampleCatalog, root: Path) -> CatalensService:
    fake_service.ingest("shop", _source(root))
    return fake_service


# -- collections ---------------------------------------------------------------------------


def test_the_fake_embedder_tells_the_sample_products_apart(sample: SampleCatalog) -> None:
    embedder = FakeEmbedder()
    fronts = embed_images(
        embedder, [Image.open(p.images[0]).convert("RGB") for p in sample.products]
    )
    again = embed_images(
        embedder, [Image.open(p.images[0]).convert("RGB") for p in sample.products]
    )
    np.testing.assert_array_equal(fronts, again)
    assert fronts.shape == (SAMPLE_PRODUCTS, 64)
    np.testing.assert_allclose(np.linalg.norm(fronts, axis=1), 1.0, rtol=1e-5)
    similarity = fronts @ fronts.T
    np.fill_diagonal(similarity, -1.0)
    assert similarity.max() < 0.95


def test_a_first_ingest_embeds_every_image_and_creates_the_collection(
    fake_service: CatalensService, fake_embedder: FakeEmbedder, sample: SampleCatalog, root: Path
) -> None:
    report = fake_service.ingest("shop", _source(root))
    total = _total_images(sample)
    assert (report.products_added, report.images_embedded, report.failed) == (
        SAMPLE_PRODUCTS,
        total,
        [],
    )
    assert fake_embedder.embedded == total
    assert fake_service.collection_names() == ["shop"]
    info = fake_service.collection("shop").info()
    assert (info["products"], info["images"], info["vectors"]) == (SAMPLE_PRODUCTS, total, total)
    assert (info["model"], info["dim"]) == ("fake-embedder", 64)
    (summary,) = fake_service.summaries()
    assert (summary.name, summary.products, summary.images) == ("shop", SAMPLE_PRODUCTS, total)


def test_a_rerun_with_nothing_changed_embeds_nothing(
    shop: CatalensService, fake_embedder: FakeEmbedder, sample: SampleCatalog, root: Path
) -> None:
    before = fake_embedder.embedded
    again = shop.ingest("shop", _source(root))
    assert (again.images_embedded, again.images_unchanged) == (0, _total_images(sample))
    assert (again.products_added, again.products_removed) == (0, 0)
    assert fake_embedder.embedded == before
    assert shop.sync("shop").images_embedded == 0  # the configured source, read again


def test_a_changed_image_is_embedded_again_and_found(
    shop: CatalensService, fake_embedder: FakeEmbedder, sample: SampleCatalog, root: Path
) -> None:
    product = sample.products[2]
    path = _moved(product.images[0], sample, root)
    picture = Image.new("RGB", (320, 320), "white")
    ImageDraw.Draw(picture).ellipse((40, 40, 280, 280), fill=(250, 120, 0))
    picture.save(path, format="PNG")
    later = time.time_ns() + 10**9
    os.utime(path, ns=(later, later))
    before = fake_embedder.embedded
    report = shop.ingest("shop", _source(root))
    assert (report.images_embedded, fake_embedder.embedded - before) == (1, 1)
    hit = shop.search("shop", image=path.read_bytes(), top_k=1)[0]
    assert (hit.product_id, Path(hit.image).name) == (product.id, path.name)
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_a_product_gone_from_the_catalog_is_removed(
    shop: CatalensService, sample: SampleCatalog, root: Path
) -> None:
    gone = sample.products[3]
    report = shop.ingest("shop", SourceConfig(location=str(_without_product(root, gone.id))))
    assert (report.products_removed, report.images_embedded) == (1, 0)
    left = _total_images(sample) - len(gone.images)
    assert len(shop.collection("shop").store) == left
    hits = shop.search("shop", image=gone.images[0].read_bytes(), top_k=SAMPLE_PRODUCTS)
    assert gone.id not in {h.product_id for h in hits}
    assert len(hits) == SAMPLE_PRODUCTS - 1


def test_collections_are_created_once_deleted_and_refuse_another_model(
    shop: CatalensService, root: Path
) -> None:
    with pytest.raises(CatalensError, match="already exists"):
        shop.create_collection("shop")
    other = FakeEmbedder(seed=7)
    mixed = CatalensService(
        fake_settings(shop.settings.home),
        embedder_loader=lambda spec: other if spec == "other" else shop.embedder(),
    )
    try:
        with pytest.raises(ModelMismatchError, match="fake-embedder"):
            mixed.ingest("shop", _source(root), model="other")
    finally:
        mixed.close()
    shop.delete_collection("shop")
    assert shop.collection_names() == []
    assert not (shop.settings.collections_dir / "shop").exists()
    with pytest.raises(CollectionNotFoundError):
        shop.search("shop", image=b"", top_k=1)


# -- upserts and deletes -------------------------------------------------------------------


def test_upsert_adds_and_replaces_products_and_leaves_the_rest(
    make_fake_service: Callable[..., CatalensService],
    sample: SampleCatalog,
    root: Path,
    tmp_path: Path,
) -> None:
    # An upsert (as the HTTP API makes it) may name local files only in the allowed folders.
    shop = make_fake_service(api_local_image_dirs=(tmp_path,))
    shop.ingest("shop", _source(root))
    picture = Image.new("RGB", (200, 200), (20, 20, 20))
    ImageDraw.Draw(picture).rectangle((50, 30, 150, 170), fill=(0, 200, 90))
    new_image = tmp_path / "new.png"
    picture.save(new_image)
    first = sample.products[0]
    report = shop.upsert_products(
        "shop",
        [
            Product("n1", "New One", (str(new_image),), {"category": "New"}),
            Product(first.id, "Renamed", tuple(str(_moved(p, sample, root)) for p in first.images)),
        ],
    )
    assert (report.products_added, report.products_removed, report.images_embedded) == (1, 0, 1)
    info = shop.collection("shop").info()
    assert (info["products"], info["images"]) == (SAMPLE_PRODUCTS + 1, _total_images(sample) + 1)
    hit = shop.search("shop", image=new_image.read_bytes(), top_k=1)[0]
    assert (hit.product_id, hit.title, dict(hit.metadata)) == ("n1", "New One", {"category": "New"})
    renamed = shop.search("shop", image=first.images[0].read_bytes(), top_k=1)[0]
    assert (renamed.product_id, renamed.title) == (first.id, "Renamed")
    outside = str(sample.products[1].images[0])  # the shared sample, not under tmp_path
    with pytest.raises(CatalensError, match="local file"):
        shop.upsert_products("shop", [Product("n2", "Outside", (outside,))])
    assert shop.collection("shop").info()["products"] == SAMPLE_PRODUCTS + 1


def test_delete_products_counts_what_it_removed(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    gone = sample.products[1]
    assert shop.delete_products("shop", [gone.id, "no-such-product"]) == 1
    info = shop.collection("shop").info()
    assert info["products"] == SAMPLE_PRODUCTS - 1
    assert info["vectors"] == _total_images(sample) - len(gone.images)
    hits = shop.search("shop", image=gone.images[0].read_bytes(), top_k=SAMPLE_PRODUCTS)
    assert gone.id not in {h.product_id for h in hits}
    assert shop.delete_products("shop", [gone.id]) == 0


# -- search --------------------------------------------------------------------------------


def test_search_ranks_products_like_brute_force(
    shop: CatalensService, fake_embedder: FakeEmbedder, sample: SampleCatalog
) -> None:
    vectors = _catalog_vectors(fake_embedder, sample)
    photo = sample.products[4].shopper_photos[0].read_bytes()
    expected = _brute_force(shop.embed_image(photo), vectors)
    hits = shop.search("shop", image=photo, top_k=5)
    assert _ranked(hits) == [(pid, round(score, 5)) for pid, score in expected[:5]]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(h.collection == "shop" for h in hits)
    # Each hit shows the product's image that matched best.
    for hit in hits:
        product = next(p for p in sample.products if p.id == hit.product_id)
        best = int(np.argmax(vectors[product.id] @ shop.embed_image(photo)))
        assert Path(hit.image).name == product.images[best].name
    everything = shop.search("shop", image=photo, top_k=50)
    assert len(everything) == SAMPLE_PRODUCTS


def test_a_catalog_image_finds_its_own_product_at_score_one(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    for product in sample.products:
        hit = shop.search("shop", image=product.images[-1].read_bytes(), top_k=1)[0]
        assert hit.product_id == product.id
        assert hit.score == pytest.approx(1.0, abs=1e-5)
        assert hit.title == product.title


def test_filters_threshold_and_exclude(
    shop: CatalensService, fake_embedder: FakeEmbedder, sample: SampleCatalog
) -> None:
    vectors = _catalog_vectors(fake_embedder, sample)
    photo = sample.products[0].shopper_photos[1].read_bytes()
    expected = _brute_force(shop.embed_image(photo), vectors)
    by_id = {p.id: p for p in sample.products}
    category = sample.products[0].category
    hits = shop.search("shop", image=photo, top_k=10, filters={"category": category})
    wanted = [(pid, round(s, 5)) for pid, s in expected if by_id[pid].category == category]
    assert _ranked(hits) == wanted and wanted
    brands = sorted({p.brand for p in sample.products})[:2]
    hits = shop.search("shop", image=photo, top_k=10, filters={"brand": brands})
    assert [h.product_id for h in hits] == [
        pid for pid, _ in expected if by_id[pid].brand in brands
    ]
    assert shop.search("shop", image=photo, filters={"category": "No such"}) == []

    # The collection is calibrated: a threshold reads the calibrated probability.
    everything = shop.search("shop", image=photo, top_k=10)
    probabilities = sorted({h.probability or 0.0 for h in everything}, reverse=True)
    cutoff = (probabilities[0] + probabilities[1]) / 2  # between the best and the next
    assert [h.product_id for h in shop.search("shop", image=photo, threshold=cutoff)] == [
        h.product_id for h in everything if (h.probability or 0.0) >= cutoff
    ]
    left_out = {expected[0][0], expected[2][0]}
    hits = shop.search("shop", image=photo, top_k=3, exclude=left_out)
    assert [h.product_id for h in hits] == [pid for pid, _ in expected if pid not in left_out][:3]


def test_searching_all_collections_merges_and_renumbers(
    fake_service: CatalensService, sample: SampleCatalog, root: Path
) -> None:
    fake_service.ingest("a", _source(root))
    fake_service.ingest("b", SourceConfig(location=str(_without_product(root, "p001"))))
    photo = sample.products[0].images[0].read_bytes()
    hits = fake_service.search("all", image=photo, top_k=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert (hits[0].product_id, hits[0].collection) == ("p001", "a")
    only_a = fake_service.search("a", image=photo, top_k=3)
    only_b = fake_service.search("b", image=photo, top_k=3)
    merged = sorted([*only_a, *only_b], key=lambda h: -h.score)[:3]
    assert [(h.collection, h.product_id) for h in hits] == [
        (h.collection, h.product_id) for h in merged
    ]


def test_a_search_needs_exactly_one_of_image_or_text(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    with pytest.raises(CatalensError, match="exactly one"):
        shop.search("shop")
    with pytest.raises(CatalensError, match="exactly one"):
        shop.search("shop", image=sample.products[0].images[0].read_bytes(), text="cola")
    with pytest.raises(CatalensError, match="text tower"):
        shop.search("shop", text="cola")


# -- a store that lags the ledger ----------------------------------------------------------


def test_a_store_behind_its_ledger_is_rebuilt_on_open_without_embedding(
    tmp_path: Path, sample: SampleCatalog, root: Path
) -> None:
    """As after a kill between the ledger's commit and the index's save: the store files
    are those of the run before; opening the collection rebuilds them from the ledger."""
    settings = fake_settings(tmp_path / "home")
    first, _ = build_fake_service(settings)
    first.ingest("shop", _source(root))
    store_dir = settings.collections_dir / "shop" / "faiss"
    saved = Path(shutil.copytree(store_dir, tmp_path / "faiss-before"))
    gone = sample.products[5]
    first.ingest("shop", SourceConfig(location=str(_without_product(root, gone.id))))
    first.close()
    shutil.rmtree(store_dir)
    shutil.copytree(saved, store_dir)  # the index as it was before the second run

    second, embedder = build_fake_service(settings)
    try:
        collection = second.collection("shop")
        left = _total_images(sample) - len(gone.images)
        assert len(collection.store) == left == collection.info()["images"]
        assert embedder.embedded == 0, "rebuilt from the ledger's vectors, not re-embedded"
        hits = second.search("shop", image=gone.images[0].read_bytes(), top_k=SAMPLE_PRODUCTS)
        assert gone.id not in {h.product_id for h in hits}
        assert len(hits) == SAMPLE_PRODUCTS - 1
    finally:
        second.close()


def test_a_reopened_collection_answers_the_same(
    tmp_path: Path, sample: SampleCatalog, root: Path
) -> None:
    settings = fake_settings(tmp_path / "home")
    first, _ = build_fake_service(settings)
    first.ingest("shop", _source(root))
    photo = sample.products[6].shopper_photos[0].read_bytes()
    before = first.search("shop", image=photo, top_k=4)
    first.close()
    second, _ = build_fake_service(settings)
    try:
        assert second.search("shop", image=photo, top_k=4) == before
    finally:
        second.close()
