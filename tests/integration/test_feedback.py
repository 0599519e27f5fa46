"""The feedback loop through the service, with the real offline model on the sample catalog:
confirmed views (provenance, dedup, cap, syncs, removal) and hard negatives."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.collection.refit import calibrated_without
from catalens.errors import ConfigError, ProductNotFoundError, QueryNotFoundError
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.search.calibration import Calibration
from catalens.service.service import CatalensService, build_service
from catalens.service.trusted import TrustedPath
from catalens.settings import Settings
from catalens.types import Hit


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("fb-sample"), products=6)


@pytest.fixture
def service(
    tmp_path: Path, make_settings: Callable[..., Settings], catalog: SampleCatalog
) -> Iterator[CatalensService]:
    svc = build_service(make_settings(tmp_path / "home", max_confirmed_views=3))
    svc.ingest("shop", SourceConfig(location=str(catalog.catalog_csv)))
    yield svc
    svc.close()


def _ranking(hits: list[Hit]) -> list[tuple[str, float, str | None, float | None]]:
    return [(h.product_id, round(h.score, 6), h.verdict, h.probability) for h in hits]


def _recode(path: Path, *, quality: int = 80) -> bytes:
    """The same photo re-encoded: a near-identical query, different bytes."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def test_a_search_keeps_its_photo_and_a_confirmation_makes_a_view(
    service: CatalensService, catalog: SampleCatalog
) -> None:
    product = catalog.products[1]
    photo = product.shopper_photos[0]
    result = service.query("shop", image=TrustedPath(photo), top_k=3)
    assert result.query_id
    assert service.search("shop", image=TrustedPath(photo), top_k=3)  # hits only, nothing kept
    kept = service.queries.get(result.query_id)
    assert kept is not None and kept[0].image == photo.read_bytes()

    done = service.feedback(
        "shop", query_id=result.query_id, verdict="correct", product_id=product.id, user="ann"
    )
    assert done.added and done.view is not None
    view = done.view
    assert (view.product_id, view.verdict, view.user) == (product.id, "correct", "ann")
    assert view.query_id == result.query_id and view.created_at > 0
    collection = service.collection("shop")
    saved = collection.directory / view.ref
    assert view.ref.startswith("views/") and saved.read_bytes() == photo.read_bytes()
    # The stored vector is the photo's plain view, reused from the kept query.
    (plain,) = kept[1].values()
    stored = collection.ledger.vectors_of_images([view.view_id], collection.config.model.dim)
    np.testing.assert_array_equal(stored[0], plain.plain)
    info = collection.info()
    assert info["confirmed_views"] == 1 and info["has_text_tower"] is False
    # A catalog image of the product is still what a hit shows.
    hit = service.search("shop", image=TrustedPath(photo), top_k=1)[0]
    assert hit.product_id == product.id and hit.score > 0.9
    assert not hit.image.startswith("views/")
    assert service.collection("shop").ledger.get_product(product.id).images == tuple(  # type: ignore[union-attr]
        str(p) for p in product.images
    )


def test_the_same_photo_is_one_view_and_actually_moves_it(
    service: CatalensService, catalog: SampleCatalog
) -> None:
    a, b = catalog.products[0], catalog.products[2]
    photo = a.shopper_photos[0]
    first = service.feedback("shop", image=TrustedPath(photo), verdict="correct", product_id=a.id)
    again = service.feedback("shop", image=TrustedPath(photo), verdict="correct", product_id=a.id)
    assert first.added and not again.added
    assert again.view is not None and first.view is not None
    assert again.view.view_id == first.view.view_id
    moved = service.feedback("shop", image=TrustedPath(photo), verdict="actually", product_id=b.id)
    assert moved.added and moved.removed_views == (first.view.view_id,)
    assert service.confirmed_views("shop", a.id) == []
    assert [v.verdict for v in service.confirmed_views("shop", b.id)] == ["actually"]


def test_the_cap_drops_the_most_redundant_view(
    service: CatalensService, catalog: SampleCatalog, tmp_path: Path
) -> None:
    product = catalog.products[3]
    photo = product.shopper_photos[0]
    twin = tmp_path / "twin.jpg"
    twin.write_bytes(_recode(photo, quality=70))  # nearly the same photo again
    others = [p for q in catalog.products[4:] for p in q.shopper_photos][:2]
    for image in [photo, *others, twin]:
        service.feedback("shop", image=TrustedPath(image), verdict="correct", product_id=product.id)
    views = service.confirmed_views("shop", product.id)
    assert len(views) == 3  # max_confirmed_views
    kept_bytes = {(service.collection("shop").directory / v.ref).read_bytes() for v in views}
    # One of the two near-identical photos went; the different ones stayed.
    assert (photo.read_bytes() in kept_bytes) != (twin.read_bytes() in kept_bytes)
    assert {o.read_bytes() for o in others} <= kept_bytes


def test_confirmed_views_survive_syncs_and_go_with_their_product(
    service: CatalensService, catalog: SampleCatalog, tmp_path: Path
) -> None:
    product = catalog.products[5]
    done = service.feedback(
        "shop",
        image=TrustedPath(product.shopper_photos[0]),
        verdict="correct",
        product_id=product.id,
    )
    assert done.view is not None
    saved = service.collection("shop").directory / done.view.ref
    service.sync("shop")
    assert [v.view_id for v in service.confirmed_views("shop", product.id)] == [done.view.view_id]
    # Drop the product from the catalog: its confirmed view and the saved photo go too.
    smaller = tmp_path / "catalog.csv"
    with catalog.catalog_csv.open(newline="", encoding="utf-8") as src:
        rows = list(csv.reader(src))
    with smaller.open("w", newline="", encoding="utf-8") as dst:
        csv.writer(dst).writerows(r for r in rows if r[0] != product.id)
    # Paths in the CSV are relative to its folder: keep them resolvable.
    for name in ("images", "queries"):
        (tmp_path / name).symlink_to(catalog.root / name)
    report = service.ingest("shop", SourceConfig(location=str(smaller)))
    assert report.products_removed == 1
    assert service.confirmed_views("shop") == []
    assert not saved.exists()


def test_wrong_lowers_the_product_for_near_identical_queries(
    service: CatalensService, catalog: SampleCatalog, tmp_path: Path
) -> None:
    photo = catalog.products[4].shopper_photos[0]
    result = service.query("shop", image=TrustedPath(photo), top_k=6)
    wrong = result.hits[0].product_id
    assert result.query_id
    done = service.feedback("shop", query_id=result.query_id, verdict="wrong", product_id=wrong)
    assert done.negative_id is not None and done.view is None
    near = tmp_path / "near.jpg"
    near.write_bytes(_recode(photo))
    after = [h.product_id for h in service.search("shop", image=TrustedPath(near), top_k=6)]
    assert after[0] != wrong
    assert after.index(wrong) > 0
    # A different photo is not affected.
    other = catalog.products[1].shopper_photos[1]
    assert (
        service.search("shop", image=TrustedPath(other), top_k=1)[0].product_id
        == catalog.products[1].id
    )


def test_removing_a_confirmed_view_restores_the_results_exactly(
    service: CatalensService, catalog: SampleCatalog
) -> None:
    photo = catalog.products[0].shopper_photos[1]
    before = service.search("shop", image=TrustedPath(photo), top_k=6)
    target = before[-1].product_id  # "it is actually" the last one
    done = service.feedback("shop", image=TrustedPath(photo), verdict="actually", product_id=target)
    assert done.view is not None
    changed = service.search("shop", image=TrustedPath(photo), top_k=6)
    assert changed[0].product_id == target
    assert service.remove_views("shop", target, [done.view.view_id]) == [done.view.view_id]
    assert _ranking(service.search("shop", image=TrustedPath(photo), top_k=6)) == _ranking(before)
    # All of a product's views at once.
    for image in catalog.products[0].shopper_photos:
        service.feedback("shop", image=TrustedPath(image), verdict="correct", product_id=target)
    assert len(service.remove_views("shop", target)) == 2
    assert _ranking(service.search("shop", image=TrustedPath(photo), top_k=6)) == _ranking(before)


def test_feedback_errors(service: CatalensService, catalog: SampleCatalog) -> None:
    photo = catalog.products[0].shopper_photos[0]
    with pytest.raises(QueryNotFoundError):
        service.feedback("shop", query_id="nope", verdict="correct", product_id="p001")
    with pytest.raises(ProductNotFoundError):
        service.feedback("shop", image=TrustedPath(photo), verdict="correct", product_id="no-such")
    with pytest.raises(ConfigError, match="verdict"):
        service.feedback("shop", image=TrustedPath(photo), verdict="maybe", product_id="p001")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="exactly one"):
        service.feedback("shop", verdict="correct", product_id="p001")


def test_queries_expire_by_count(
    tmp_path: Path, make_settings: Callable[..., Settings], catalog: SampleCatalog
) -> None:
    svc = build_service(make_settings(tmp_path / "home", query_retention_max=1))
    try:
        svc.ingest("shop", SourceConfig(location=str(catalog.catalog_csv)))
        photos = catalog.products[0].shopper_photos
        first = svc.query("shop", image=TrustedPath(photos[0])).query_id
        second = svc.query("shop", image=TrustedPath(photos[1])).query_id
        assert first and second
        with pytest.raises(QueryNotFoundError, match="retention"):
            svc.feedback("shop", query_id=first, verdict="correct", product_id="p001")
        assert svc.feedback("shop", query_id=second, verdict="correct", product_id="p001").added
    finally:
        svc.close()


def test_the_calibration_holds_still_as_the_domain_mean_moves(
    tmp_path: Path, make_settings: Callable[..., Settings], catalog: SampleCatalog
) -> None:
    """The fit reads uncentred cosines, so the running query mean moving calls for no refit
    and the same photo keeps its probability; a fit on centred scores (an older version's)
    is replaced at the next query."""
    svc = build_service(make_settings(tmp_path / "home", centering=True))
    try:
        svc.ingest("shop", SourceConfig(location=str(catalog.catalog_csv)))
        collection = svc.collection("shop")
        first = collection.calibration
        assert isinstance(first, Calibration) and first.stable
        photos = [p for product in catalog.products for p in product.shopper_photos]
        before = svc.search("shop", image=TrustedPath(photos[0]), top_k=3)
        for photo in photos * 3:
            svc.search("shop", image=TrustedPath(photo), top_k=3)
        assert collection.centering.count > 30 and collection.calibration == first
        after = svc.search("shop", image=TrustedPath(photos[0]), top_k=6)
        # The centred ranking may change; each product's probability does not.
        probability = {h.product_id: h.probability for h in after}
        assert {h.product_id: probability[h.product_id] for h in before} == {
            h.product_id: h.probability for h in before
        }
        collection.set_calibration(replace(first, space="centred"))
        svc.search("shop", image=TrustedPath(photos[1]), top_k=3)
        refitted = collection.calibration
        assert isinstance(refitted, Calibration) and refitted.stable
    finally:
        svc.close()


def test_an_evaluation_calibrates_without_the_products_it_leaves_out(
    service: CatalensService, catalog: SampleCatalog
) -> None:
    for product in catalog.products:
        for photo in product.shopper_photos:
            service.feedback(
                "shop", image=TrustedPath(photo), verdict="correct", product_id=product.id
            )
    collection = service.collection("shop")
    before = collection.calibration
    assert isinstance(before, Calibration)
    left_out = {catalog.products[0].id, catalog.products[1].id}
    with calibrated_without(collection, left_out):
        during = collection.calibration
        assert isinstance(during, Calibration) and during.queries < before.queries
        assert collection.calibration_exclude == left_out
    assert collection.calibration == before and not collection.calibration_exclude
    assert Calibration.from_dict(collection.ledger.calibration() or {}) == before
