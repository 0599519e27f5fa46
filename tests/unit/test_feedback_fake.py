"""The feedback loop and the query log on the fake embedder (``tests/fakes.py``), in seconds:
confirmed views (provenance, one view per photo, ``actually``, the cap, removal, syncs),
hard negatives, and kept queries (reuse, expiry by count and by age)."""

from __future__ import annotations

import csv
import io
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.errors import CatalensError, ProductNotFoundError, QueryNotFoundError
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import CatalensService
from catalens.types import Hit
from fakes import FakeEmbedder

NEGATIVE_PENALTY = 0.5
"""``SearchOptions.negative_penalty``: what a product loses for the very photo it was
wrongly matched to."""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("fake-feedback"), products=6)


@pytest.fixture
def root(sample: SampleCatalog, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sample.root, tmp_path / "catalog"))


@pytest.fixture
def make_shop(
    make_fake_service: Callable[..., CatalensService], root: Path
) -> Callable[..., CatalensService]:
    """``make_shop(**settings)``: a fake service with the sample ingested as ``shop``."""

    def make(**overrides: object) -> CatalensService:
        service = make_fake_service(**overrides)
        service.ingest("shop", SourceConfig(location=str(root / "catalog.csv")))
        return service

    return make


@pytest.fixture
def shop(make_shop: Callable[..., CatalensService]) -> CatalensService:
    return make_shop(max_confirmed_views=2)


def _photo(sample: SampleCatalog, product: int, which: int = 0) -> bytes:
    return sample.products[product].shopper_photos[which].read_bytes()


def _scores(hits: list[Hit]) -> dict[str, float]:
    return {h.product_id: h.score for h in hits}


def _ranking(hits: list[Hit]) -> list[tuple[str, float, str | None, float | None]]:
    return [(h.product_id, round(h.score, 6), h.verdict, h.probability) for h in hits]


def _recode(data: bytes, quality: int) -> bytes:
    """The same photo encoded again: a near-identical image in other bytes."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _not_top(service: CatalensService, sample: SampleCatalog) -> tuple[bytes, str, str]:
    """A shopper photo whose top hit is another product: (photo, its product, the top hit)."""
    for product in sample.products:
        for path in product.shopper_photos:
            top = service.search("shop", image=path.read_bytes(), top_k=1)[0].product_id
            if top != product.id:
                return path.read_bytes(), product.id, top
    raise AssertionError("the fake embedder gets every sample photo right: pick another sample")


# -- confirmed views -----------------------------------------------------------------------


def test_a_kept_query_confirmed_becomes_a_view_without_embedding_again(
    shop: CatalensService, fake_embedder: FakeEmbedder, sample: SampleCatalog
) -> None:
    photo, product, top = _not_top(shop, sample)
    result = shop.query("shop", image=photo, top_k=3)
    assert result.query_id and result.hits[0].product_id == top
    embedded = fake_embedder.embedded
    done = shop.feedback(
        "shop", query_id=result.query_id, verdict="correct", product_id=product, user="ann"
    )
    assert fake_embedder.embedded == embedded, "a kept query brings its vectors along"
    assert done.added and done.view is not None and done.negative_id is None
    view = done.view
    assert (view.product_id, view.verdict, view.user, view.query_id) == (
        product,
        "correct",
        "ann",
        result.query_id,
    )
    collection = shop.collection("shop")
    assert view.ref.startswith("views/")
    assert (collection.directory / view.ref).read_bytes() == photo
    assert collection.info()["confirmed_views"] == 1
    assert shop.confirmed_views("shop", product) == [view]
    # The photo now matches its own view exactly; a hit still shows a catalog image.
    hit = shop.search("shop", image=photo, top_k=1)[0]
    assert hit.product_id == product
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert not hit.image.startswith("views/")
    assert hit.image_id is not None and hit.image_id != view.view_id


def test_the_same_photo_is_one_view_and_actually_moves_it(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    a, b = sample.products[0].id, sample.products[2].id
    photo = _photo(sample, 0)
    first = shop.feedback("shop", image=photo, verdict="correct", product_id=a)
    again = shop.feedback("shop", image=photo, verdict="correct", product_id=a)
    assert first.added and not again.added
    assert first.view is not None and again.view is not None
    assert again.view.view_id == first.view.view_id
    moved = shop.feedback("shop", image=photo, verdict="actually", product_id=b)
    assert moved.added and moved.removed_views == (first.view.view_id,)
    assert shop.confirmed_views("shop", a) == []
    assert [v.verdict for v in shop.confirmed_views("shop", b)] == ["actually"]
    assert shop.collection("shop").info()["confirmed_views"] == 1


def test_the_cap_drops_the_most_redundant_view(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    product = sample.products[3].id
    photo = _photo(sample, 3)
    twin = _recode(photo, quality=70)
    other = _photo(sample, 5, 1)
    for image in (photo, other, twin):
        shop.feedback("shop", image=image, verdict="correct", product_id=product)
    views = shop.confirmed_views("shop", product)
    assert len(views) == 2  # max_confirmed_views
    directory = shop.collection("shop").directory
    kept = {(directory / v.ref).read_bytes() for v in views}
    assert other in kept
    assert (photo in kept) != (twin in kept)
    # The dropped view's saved photo is deleted with it.
    assert len(list((directory / "views").iterdir())) == 2


def test_removing_views_restores_the_results_exactly(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo = _photo(sample, 1, 1)
    before = shop.search("shop", image=photo, top_k=6)
    target = before[-1].product_id
    done = shop.feedback("shop", image=photo, verdict="actually", product_id=target)
    assert done.view is not None
    assert shop.search("shop", image=photo, top_k=1)[0].product_id == target
    assert shop.remove_views("shop", target, [done.view.view_id]) == [done.view.view_id]
    assert _ranking(shop.search("shop", image=photo, top_k=6)) == _ranking(before)
    for image in (_photo(sample, 1, 0), photo):
        shop.feedback("shop", image=image, verdict="correct", product_id=target)
    assert len(shop.remove_views("shop", target)) == 2
    assert shop.confirmed_views("shop") == []
    assert _ranking(shop.search("shop", image=photo, top_k=6)) == _ranking(before)


def test_views_survive_syncs_and_go_with_their_product(
    shop: CatalensService, sample: SampleCatalog, root: Path
) -> None:
    product = sample.products[4].id
    done = shop.feedback("shop", image=_photo(sample, 4), verdict="correct", product_id=product)
    assert done.view is not None
    saved = shop.collection("shop").directory / done.view.ref
    assert shop.sync("shop").products_removed == 0
    assert [v.view_id for v in shop.confirmed_views("shop", product)] == [done.view.view_id]
    with (root / "catalog.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle) if row[0] != product]
    with (root / "smaller.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    report = shop.ingest("shop", SourceConfig(location=str(root / "smaller.csv")))
    assert report.products_removed == 1
    assert shop.confirmed_views("shop") == []
    assert not saved.exists()


# -- hard negatives ------------------------------------------------------------------------


def test_wrong_takes_the_penalty_off_that_product_for_that_photo_only(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo = _photo(sample, 2)
    query = shop.embed_image(photo)
    # A photo far from this one (cosine under negative_similarity) is not penalised.
    far = next(
        p.read_bytes()
        for product in sample.products
        for p in product.shopper_photos
        if float(shop.embed_image(p.read_bytes()) @ query) < 0.5
    )
    far_before = _scores(shop.search("shop", image=far, top_k=6))
    before = shop.query("shop", image=photo, top_k=6)
    wrong = before.hits[0].product_id
    assert before.query_id
    done = shop.feedback("shop", query_id=before.query_id, verdict="wrong", product_id=wrong)
    assert done.negative_id is not None and done.view is None and not done.added
    after = _scores(shop.search("shop", image=photo, top_k=6))
    expected = {**_scores(before.hits), wrong: _scores(before.hits)[wrong] - NEGATIVE_PENALTY}
    assert after == pytest.approx(expected, abs=1e-5)
    assert max(after, key=after.__getitem__) != wrong
    assert _scores(shop.search("shop", image=far, top_k=6)) == pytest.approx(far_before)


def test_wrong_on_a_confirmed_view_removes_it(shop: CatalensService, sample: SampleCatalog) -> None:
    product = sample.products[0].id
    photo = _photo(sample, 0, 1)
    done = shop.feedback("shop", image=photo, verdict="correct", product_id=product)
    assert done.view is not None
    undone = shop.feedback("shop", image=photo, verdict="wrong", product_id=product)
    assert undone.removed_views == (done.view.view_id,)
    assert undone.negative_id is not None
    assert shop.confirmed_views("shop", product) == []


def test_feedback_errors(shop: CatalensService, sample: SampleCatalog) -> None:
    photo = _photo(sample, 0)
    with pytest.raises(QueryNotFoundError):
        shop.feedback("shop", query_id="nope", verdict="correct", product_id="p001")
    with pytest.raises(ProductNotFoundError):
        shop.feedback("shop", image=photo, verdict="correct", product_id="no-such")
    with pytest.raises(ProductNotFoundError):
        shop.confirmed_views("shop", "no-such")
    with pytest.raises(CatalensError, match="verdict"):
        shop.feedback("shop", image=photo, verdict="maybe", product_id="p001")  # type: ignore[arg-type]
    with pytest.raises(CatalensError, match="exactly one"):
        shop.feedback("shop", verdict="correct", product_id="p001")
    assert shop.confirmed_views("shop") == []


# -- the query log -------------------------------------------------------------------------


def test_kept_queries_expire_by_count(
    make_shop: Callable[..., CatalensService], sample: SampleCatalog
) -> None:
    shop = make_shop(query_retention_max=1)
    first = shop.query("shop", image=_photo(sample, 0, 0)).query_id
    second = shop.query("shop", image=_photo(sample, 0, 1)).query_id
    assert first and second and first != second
    with pytest.raises(QueryNotFoundError, match="retention"):
        shop.feedback("shop", query_id=first, verdict="correct", product_id="p001")
    assert shop.feedback("shop", query_id=second, verdict="correct", product_id="p001").added


def test_kept_queries_expire_by_age(
    make_shop: Callable[..., CatalensService], sample: SampleCatalog
) -> None:
    shop = make_shop(query_retention_seconds=0.5)
    kept = shop.query("shop", image=_photo(sample, 1)).query_id
    assert kept
    time.sleep(0.6)
    with pytest.raises(QueryNotFoundError):
        shop.feedback("shop", query_id=kept, verdict="correct", product_id="p002")
    fresh = shop.query("shop", image=_photo(sample, 1)).query_id
    assert fresh and shop.feedback("shop", query_id=fresh, verdict="correct", product_id="p002")


def test_nothing_is_kept_with_a_zero_retention_and_searches_keep_nothing(
    make_shop: Callable[..., CatalensService], sample: SampleCatalog
) -> None:
    shop = make_shop(query_retention_max=0)
    result = shop.query("shop", image=_photo(sample, 1))
    assert result.query_id is None and len(result.hits) == 6
    assert shop.queries.get("anything") is None
    kept = make_shop(home=shop.settings.home.parent / "other")
    assert kept.query("shop", image=_photo(sample, 1)).query_id
    kept.search("shop", image=_photo(sample, 1))
    assert len(kept.queries) == 1, "search() does not keep the photo, query() does"
