"""``--feedback-share``: feedback for a seeded share of the products, and the queries of the
products with and without feedback scored apart (on the fake embedder, in seconds)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from catalens.collection.config import SourceConfig
from catalens.errors import ConfigError
from catalens.eval.evaluate import Query, QueryResult, read_queries, score_split
from catalens.eval.feedback_curve import feedback_curve, feedback_products, pick_photos
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import CatalensService


def _result(relevant: str, ranked: list[str]) -> QueryResult:
    return QueryResult(Query(Path(f"{relevant}.jpg"), frozenset({relevant})), tuple(ranked), 0.0)


def test_score_split_by_hand() -> None:
    results = [
        _result("a", ["a", "b"]),  # fed, rank 1
        _result("a", ["b", "c", "a"]),  # fed, rank 3
        _result("b", ["c", "d", "e", "f", "g", "b"]),  # not fed, rank 6
        _result("c", ["c"]),  # not fed, rank 1
    ]
    split = score_split(results, frozenset({"a"}))
    assert split["with_feedback"] == {"queries": 2, "recall@1": 0.5, "recall@5": 1.0}
    assert split["without_feedback"] == {"queries": 2, "recall@1": 0.5, "recall@5": 0.5}
    nobody = score_split(results, frozenset())
    assert nobody["with_feedback"]["queries"] == 0
    assert nobody["without_feedback"]["queries"] == 4


def test_feedback_products_is_a_seeded_share() -> None:
    ids = {f"p{i}" for i in range(10)}
    half = feedback_products(ids, 0.5, seed=3)
    assert len(half) == 5 and half <= ids
    assert feedback_products(ids, 0.5, seed=3) == half
    assert any(feedback_products(ids, 0.5, seed=s) != half for s in range(4, 10))
    assert feedback_products(ids, None) == ids
    assert feedback_products(ids, 1.0) == ids
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="--feedback-share"):
            feedback_products(ids, bad)


def test_pick_photos_takes_only_the_chosen_products() -> None:
    pool = [Query(Path(f"{p}{i}.jpg"), frozenset({p})) for p in "abc" for i in range(3)]
    picked = pick_photos(pool, {"a", "c"}, 2, seed=0)
    assert sorted(pid for pid, _ in picked) == ["a", "a", "c", "c"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("feedback-split"), products=6)


def test_a_share_feeds_only_its_products_and_scores_both_halves(
    make_fake_service: Callable[..., CatalensService], sample: SampleCatalog, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(sample.root, tmp_path / "catalog"))
    service = make_fake_service()
    service.ingest("shop", SourceConfig(location=str(root / "catalog.csv")))
    queries = read_queries(root / sample.queries_csv.name)
    fed_products = feedback_products(service.collection("shop").ledger.product_ids(), 0.5)
    points = feedback_curve(service, "shop", queries, queries, [0, 1], share=0.5)
    fed = points[1]
    assert points[0].fed == 0
    # One photo for each of the 3 products in the share, none for the others.
    per_product = {pid: sum(1 for q in queries if pid in q.item_ids) for pid in fed_products}
    assert fed.fed == sum(min(1, n) for n in per_product.values()) == 3
    for point in points:
        split = point.report.feedback_split
        assert split is not None
        with_fb, without = split["with_feedback"], split["without_feedback"]
        assert with_fb["queries"] + without["queries"] == point.report.metrics["queries"]
        assert with_fb["queries"] == sum(1 for q in queries if q.item_ids & fed_products)
        assert point.to_dict()["feedback_share"] == 0.5
        assert point.to_dict()["feedback_split"] == split
    # Without a share, no split is reported.
    (whole,) = feedback_curve(service, "shop", queries, queries, [0])
    assert whole.report.feedback_split is None
    assert "feedback_split" not in whole.to_dict()
