"""Untrusted (keyless) feedback on the fake embedder: it waits as a pending verdict unless
the model agrees or distinct clients corroborate it, a review approves or rejects it, and
a pending verdict applies once its product learns enough to agree. Plus the rate limiter."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from catalens.collection.config import SourceConfig
from catalens.feedback.rate_limit import RateLimiter
from catalens.feedback.trust import Trust
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import CatalensService


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("trust"), products=6)


@pytest.fixture
def shop(
    make_fake_service: Callable[..., CatalensService], sample: SampleCatalog, tmp_path: Path
) -> CatalensService:
    root = Path(shutil.copytree(sample.root, tmp_path / "catalog"))
    service = make_fake_service(feedback_agree_rank=1, feedback_corroborations=2)
    service.ingest("shop", SourceConfig(location=str(root / "catalog.csv")))
    return service


def _keyless(client: str) -> Trust:
    return Trust(trusted=False, client=client)


def _ranked(service: CatalensService, photo: bytes) -> list[str]:
    return [h.product_id for h in service.search("shop", image=photo, top_k=6, observe=False)]


def _photo_and_wrong(service: CatalensService, sample: SampleCatalog) -> tuple[bytes, str, str]:
    """A shopper photo, its product, and the product ranked last for it."""
    photo = sample.products[0].shopper_photos[0].read_bytes()
    return photo, sample.products[0].id, _ranked(service, photo)[-1]


def test_a_keyless_verdict_against_the_model_waits_and_changes_nothing(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo, _, wrong = _photo_and_wrong(shop, sample)
    before = _ranked(shop, photo)
    result = shop.feedback(
        "shop", image=photo, verdict="actually", product_id=wrong, trust=_keyless("1.2.3.4")
    )
    assert (result.applied, result.reason, result.view) == (False, "pending", None)
    assert result.pending_id is not None
    assert shop.confirmed_views("shop") == []
    assert _ranked(shop, photo) == before
    (row,) = shop.pending_verdicts("shop")
    assert (row.pending_id, row.product_id, row.client) == (result.pending_id, wrong, "1.2.3.4")
    assert shop.pending_photo("shop", row.pending_id) == photo
    # The same verdict again from the same client corroborates nothing.
    again = shop.feedback(
        "shop", image=photo, verdict="actually", product_id=wrong, trust=_keyless("1.2.3.4")
    )
    assert not again.applied and len(shop.pending_verdicts("shop")) == 2


def test_a_keyless_verdict_the_model_agrees_with_applies(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo = sample.products[1].shopper_photos[0].read_bytes()
    top = _ranked(shop, photo)[0]
    result = shop.feedback(
        "shop", image=photo, verdict="correct", product_id=top, trust=_keyless("5.6.7.8")
    )
    assert (result.applied, result.reason, result.added) == (True, "agrees", True)
    assert shop.pending_verdicts("shop") == []
    assert [v.product_id for v in shop.confirmed_views("shop")] == [top]


def test_a_keyless_wrong_waits_even_on_the_top_product(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo = sample.products[1].shopper_photos[0].read_bytes()
    top = _ranked(shop, photo)[0]
    result = shop.feedback(
        "shop", image=photo, verdict="wrong", product_id=top, trust=_keyless("5.6.7.8")
    )
    assert not result.applied and result.negative_id is None
    assert shop.collection("shop").ledger.negative_count() == 0


def test_distinct_clients_corroborate_the_same_photo(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo, _, wrong = _photo_and_wrong(shop, sample)
    first = shop.feedback(
        "shop", image=photo, verdict="actually", product_id=wrong, trust=_keyless("a")
    )
    second = shop.feedback(
        "shop", image=photo, verdict="actually", product_id=wrong, trust=_keyless("b")
    )
    assert not first.applied
    assert (second.applied, second.reason, second.added) == (True, "corroborated", True)
    assert shop.pending_verdicts("shop") == []
    assert _ranked(shop, photo)[0] == wrong


def test_review_approves_or_rejects(shop: CatalensService, sample: SampleCatalog) -> None:
    photos = [sample.products[0].shopper_photos[0], sample.products[2].shopper_photos[0]]
    waiting = []
    for path in photos:
        photo = path.read_bytes()
        wrong = _ranked(shop, photo)[-1]
        waiting.append(
            shop.feedback(
                "shop", image=photo, verdict="actually", product_id=wrong, trust=_keyless("x")
            )
        )
    assert not any(w.applied for w in waiting)
    first, second = (w.pending_id for w in waiting)
    assert first is not None and second is not None
    rejected = shop.decide_pending("shop", first, approve=False)
    assert rejected is not None and (rejected.applied, rejected.reason) == (False, "rejected")
    approved = shop.decide_pending("shop", second, approve=True)
    assert approved is not None and (approved.applied, approved.reason) == (True, "approved")
    assert shop.pending_verdicts("shop") == []
    assert [v.product_id for v in shop.confirmed_views("shop")] == [waiting[1].product_id]
    assert shop.decide_pending("shop", second, approve=True) is None


def test_a_pending_verdict_applies_once_its_product_learns_to_agree(
    shop: CatalensService, sample: SampleCatalog
) -> None:
    photo, _, wrong = _photo_and_wrong(shop, sample)
    waiting = shop.feedback(
        "shop", image=photo, verdict="actually", product_id=wrong, trust=_keyless("x")
    )
    assert not waiting.applied
    # A trusted caller confirms the very photo (other bytes: another view) as that product:
    # the model now agrees with the waiting verdict, which applies.
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("RGB").save(buffer, format="JPEG", quality=70)
    shop.feedback("shop", image=buffer.getvalue(), verdict="actually", product_id=wrong)
    assert shop.pending_verdicts("shop") == []
    assert len(shop.confirmed_views("shop", wrong)) == 2


def test_the_rate_limiter_refills_per_client() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    assert [limiter.take("a"), limiter.take("a")] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(10.0)
    assert limiter.take("b") == 0.0
    now[0] = 5.0
    assert limiter.take("a") == pytest.approx(5.0)
    now[0] = 10.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
