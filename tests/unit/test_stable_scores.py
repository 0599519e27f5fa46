"""Cold-start calibration from synthetic views, and a user's threshold that holds still.

A real collection (sqlite state, real FAISS) of the generated sample catalog, on the fake
embedder with domain centering on: ingest fits the calibration from synthetic views of the
catalog, and the same photo searched with the same threshold gives the same results before
and after 500 other photo queries have moved the domain mean.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.sample.photos import PHOTO_SIZE
from catalens.search.calibration import SYNTHETIC, Calibration, Sample, fit_samples
from catalens.search.synthetic_views import cut_out, render_views
from catalens.service.service import CatalensService
from catalens.types import Hit


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(
        tmp_path_factory.mktemp("sample"), products=12, shopper_photos_per_product=2
    )


@pytest.fixture
def shop(
    make_fake_service: Callable[..., CatalensService], sample: SampleCatalog
) -> CatalensService:
    service = make_fake_service(centering=True, query_zooms=(1.0, 1.25), calibration_views=3)
    service.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    return service


def test_ingest_fits_a_cold_start_calibration_and_feedback_below_the_minimum_keeps_it(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    collection = shop.collection("shop")
    fitted = collection.calibration
    assert isinstance(fitted, Calibration)
    assert fitted.source == SYNTHETIC and fitted.stable
    info = collection.info()
    assert info["calibrated"] is True
    assert info["calibration"] == {"source": "synthetic", "samples": 36, "products": 12}

    product = sample.products[0]
    shop.feedback(
        "shop", image=Image.open(product.shopper_photos[0]), verdict="correct",
        product_id=product.id, user="t",
    )  # fmt: skip
    assert shop.collection("shop").info()["calibration"]["source"] == "synthetic"
    assert shop.collection("shop").ledger.confirmed_count() == 1


def _noise_photo(rng: random.Random) -> Image.Image:
    """A generated photo unlike any pack: coloured noise on a gradient."""
    arr = np.random.default_rng(rng.randrange(2**32)).integers(
        0, 256, (PHOTO_SIZE // 8, PHOTO_SIZE // 8, 3), dtype=np.uint8
    )
    return Image.fromarray(arr, "RGB").resize((PHOTO_SIZE // 2, PHOTO_SIZE // 2))


def _shown(hits: list[Hit]) -> list[tuple[str, float | None, float | None, str | None]]:
    return [(h.product_id, h.probability, h.cosine, h.verdict) for h in hits]


def test_a_threshold_returns_the_same_results_before_and_after_500_queries(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo = Image.open(sample.products[3].shopper_photos[0]).convert("RGB")
    rng = random.Random(7)
    for _ in range(20):  # centering on: the running mean is in use from here on
        shop.search("shop", image=_noise_photo(rng), top_k=5)
    everything = shop.search("shop", image=photo, top_k=10)
    probabilities = sorted({h.probability for h in everything if h.probability}, reverse=True)
    assert len(probabilities) >= 2 and all(h.cosine is not None for h in everything)
    threshold = (probabilities[0] + probabilities[1]) / 2  # keeps some hits, drops others
    before = shop.search("shop", image=photo, top_k=10, threshold=threshold)
    assert 0 < len(before) < len(everything)
    assert all(h.probability is not None and h.probability >= threshold for h in before)

    packs = [p.shopper_photos[1] for p in sample.products]
    for i in range(500):  # the same photo again after 500 others
        query = _noise_photo(rng) if i % 2 else Image.open(packs[i % len(packs)])
        shop.search("shop", image=query, top_k=5)

    again = shop.search("shop", image=photo, top_k=10)
    after = shop.search("shop", image=photo, top_k=10, threshold=threshold)
    assert _shown(after) == _shown(before)
    # The centred scores did move: the threshold would not hold on them.
    moved = {h.product_id: h.score for h in again}
    assert any(
        abs(moved[h.product_id] - h.score) > 1e-3 for h in everything if h.product_id in moved
    )


def test_synthetic_views_are_deterministic_and_cut_out_the_white_background(
    sample: SampleCatalog,
) -> None:
    front = Image.open(sample.products[0].images[0])
    alpha = np.asarray(cut_out(front))[..., 3]
    assert alpha[0, 0] == 0 and alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255
    first = render_views(front, 2, seed="a")
    assert [np.asarray(v).tobytes() for v in first] == [
        np.asarray(v).tobytes() for v in render_views(front, 2, seed="a")
    ]
    other = render_views(front, 1, seed="b")[0]
    assert np.asarray(other).tobytes() != np.asarray(first[0]).tobytes()


def _sample(rng: np.random.Generator, truth: int, right: bool) -> Sample:
    """Candidate scores of 30 products; the right one ahead by a clear margin, or not."""
    scores = rng.normal(0.5, 0.03, 30)
    scores[truth] = scores.max() + (0.15 if right else -0.05)
    return Sample({f"p{i}": float(s) for i, s in enumerate(scores)}, f"p{truth}")


def test_a_fit_from_labelled_queries_trusts_clear_margins_and_reads_any_order() -> None:
    rng = np.random.default_rng(0)
    samples = [_sample(rng, i % 30, right=i % 3 != 0) for i in range(300)]
    fitted = fit_samples(samples, source=SYNTHETIC)
    assert fitted is not None and fitted.stable
    assert fitted.summary() == {"source": "synthetic", "samples": 300, "products": 30}
    clear = _sample(rng, 4, right=True).scores
    judged = fitted.by_product(clear)
    assert judged["p4"][0] == "match"
    assert all(v[0] != "match" for pid, v in judged.items() if pid != "p4")
    reordered = dict(reversed(list(clear.items())))
    assert fitted.by_product(reordered) == judged
    unclear = _sample(rng, 4, right=False).scores
    assert all(v[0] != "match" for v in fitted.by_product(unclear).values())


def test_an_older_fit_reads_back_but_judges_nothing_until_refitted() -> None:
    old = Calibration(
        weights=(1.0, 0.0, 0.0, 0.0, 0.0), match_probability=0.5, ambiguous_probability=0.15,
        positives=10, negatives=10, queries=10, source="catalog", confirmed_views=0,
        train_fpr=0.0, fitted_at=0.0,
    ).to_dict()  # fmt: skip
    del old["space"], old["products"], old["seconds"]
    restored = Calibration.from_dict({**old, "unknown_key": 1})
    assert not restored.stable and restored.summary()["source"] == "held-out"
