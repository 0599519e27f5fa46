"""Retrieval metrics on hand-made rankings, where the right answer is known by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalens.errors import CatalogError
from catalens.eval.evaluate import Query, QueryResult, read_queries, score


def _result(relevant: str, ranked: list[str]) -> QueryResult:
    return QueryResult(Query(Path("q.jpg"), frozenset({relevant})), tuple(ranked), 0.0)


def test_score_by_hand() -> None:
    results = [
        _result("a", ["a", "b", "c"]),  # rank 1
        _result("b", ["a", "c", "d", "e", "f", "g", "b"]),  # rank 7
        _result("z", ["a", "b"]),  # not found
    ]
    metrics = score(results)
    assert metrics["queries"] == 3
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@5"] == pytest.approx(1 / 3)
    assert metrics["recall@10"] == pytest.approx(2 / 3)
    assert metrics["precision@1"] == pytest.approx(1 / 3)
    assert metrics["precision@5"] == pytest.approx((1 / 5) / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 7) / 3)
    assert metrics["map"] == pytest.approx(metrics["mrr"])


def test_map_differs_from_mrr_with_several_relevant() -> None:
    query = Query(Path("q.jpg"), frozenset({"a", "b"}))
    metrics = score([QueryResult(query, ("a", "x", "b"), 0.0)])
    assert metrics["mrr"] == pytest.approx(1.0)
    assert metrics["map"] == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert metrics["recall@1"] == pytest.approx(0.5)


def test_read_queries_filters_and_resolves_paths(tmp_path: Path) -> None:
    csv_path = tmp_path / "sub" / "queries.csv"
    csv_path.parent.mkdir()
    csv_path.write_text("image_path,item_id,role\nimg/a.jpg,A,query\nimg/b.jpg,B|C,gallery\n")
    every = read_queries(csv_path)
    assert [q.image for q in every] == [
        csv_path.parent / "img/a.jpg",
        csv_path.parent / "img/b.jpg",
    ]
    assert every[1].item_ids == {"B", "C"}
    only = read_queries(csv_path, where={"role": "query"})
    assert [q.item_ids for q in only] == [frozenset({"A"})]


def test_read_queries_names_missing_columns(tmp_path: Path) -> None:
    bad = tmp_path / "q.csv"
    bad.write_text("path,label\nx.jpg,A\n")
    with pytest.raises(CatalogError, match="missing image_path, item_id"):
        read_queries(bad)
