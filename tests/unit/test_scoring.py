"""Product scores from image matches: best view, blend with the centroid, hard negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalens.embedders.base import l2_normalize
from catalens.ledger.sqlite import Ledger
from catalens.search.query_crops import SearchOptions
from catalens.search.scoring import ViewCache, negative_penalty, score_products
from catalens.types import ImageMatch, Product


def _ledger(tmp_path: Path, views: dict[str, list[list[float]]]) -> tuple[Ledger, dict[int, str]]:
    """A ledger whose products have these view vectors; image id -> product id."""
    ledger = Ledger(tmp_path / "l.sqlite")
    owner: dict[int, str] = {}
    with ledger.transaction() as db:
        for pid, vectors in views.items():
            Ledger.write_product(db, Product(pid, pid, ()))
            for n, vector in enumerate(vectors):
                digest = f"{pid}-{n}"
                cursor = db.execute(
                    "INSERT INTO images (product_id, ref, position, content_hash, status, "
                    "updated_at) VALUES (?, ?, ?, ?, 'ok', 0)",
                    (pid, digest, n, digest),
                )
                owner[int(cursor.lastrowid or 0)] = pid
                unit = l2_normalize(np.asarray([vector], dtype=np.float32))[0]
                db.execute("INSERT INTO vectors VALUES (?, ?)", (digest, unit.tobytes()))
        Ledger.bump_generation(db)
    return ledger, owner


def _matches(query: np.ndarray, ledger: Ledger, owner: dict[int, str]) -> list[ImageMatch]:
    ids = sorted(owner)
    vectors = ledger.vectors_of_images(ids, query.size)
    scores = vectors @ query
    matches = [ImageMatch(i, owner[i], float(s)) for i, s in zip(ids, scores, strict=True)]
    return sorted(matches, key=lambda m: -m.score)


def test_blend_judges_a_product_by_all_its_views(tmp_path: Path) -> None:
    # "a" has one view close to the query and one far off; "b" two views fairly close.
    ledger, owner = _ledger(tmp_path, {"a": [[1, 0.1, 0], [0, 0, 1]], "b": [[1, 0.5, 0]] * 2})
    query = l2_normalize(np.array([[1, 0, 0]], dtype=np.float32))[0]
    views = ViewCache(ledger, 3)
    matches = _matches(query, ledger, owner)
    best = score_products(query, matches, options=SearchOptions(aggregation="max"), views=views)
    assert best["a"][0] > best["b"][0]
    blended = score_products(query, matches, options=SearchOptions(blend_weight=0.5), views=views)
    assert blended["b"][0] > blended["a"][0]
    # A single-view product, or blend_weight 1, scores its best view.
    assert blended["b"][0] == pytest.approx(best["b"][0], abs=1e-6)
    ledger.close()


def test_a_wrong_query_penalises_its_product_for_similar_queries(tmp_path: Path) -> None:
    ledger, owner = _ledger(tmp_path, {"a": [[1, 0.2, 0]], "b": [[1, 0.3, 0]]})
    query = l2_normalize(np.array([[1, 0, 0]], dtype=np.float32))[0]
    views = ViewCache(ledger, 3)
    options = SearchOptions()
    before = score_products(query, _matches(query, ledger, owner), options=options, views=views)
    assert before["a"][0] > before["b"][0]
    with ledger.transaction() as db:
        db.execute(
            "INSERT INTO negatives (product_id, vector, created_at) VALUES ('a', ?, 0)",
            (query.tobytes(),),
        )
    after = score_products(query, _matches(query, ledger, owner), options=options, views=views)
    assert after["a"][0] == pytest.approx(before["a"][0] - options.negative_penalty)
    assert after["b"][0] == before["b"][0]
    assert after["b"][0] > after["a"][0]
    # A query far from the wrong one is not penalised.
    other = l2_normalize(np.array([[0.6, 0, 0.8]], dtype=np.float32))[0]
    far = score_products(other, _matches(other, ledger, owner), options=options, views=views)
    assert far["a"][0] == pytest.approx(float(views.views_of(["a"])["a"][0] @ other))
    ledger.close()


def test_penalty_grows_from_the_similarity_floor() -> None:
    options = SearchOptions(negative_penalty=0.4, negative_similarity=0.8)
    negatives = np.array([[1.0, 0.0]], dtype=np.float32)
    at = lambda cos: negative_penalty(  # noqa: E731
        np.array([cos, np.sqrt(1 - cos**2)], dtype=np.float32), negatives, options
    )
    assert at(0.7) == 0.0
    assert at(0.9) == pytest.approx(0.2, abs=1e-5)
    assert at(1.0) == pytest.approx(0.4, abs=1e-5)
