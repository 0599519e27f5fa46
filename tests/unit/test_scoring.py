"""Product scores from image matches: best image, blend with the centroid, hard negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalens.embedders.base import l2_normalize
from catalens.ledger.sqlite import SqliteState
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.search.query_crops import SearchOptions
from catalens.search.scoring import ProductVectors, negative_penalty, score_products
from catalens.types import ImageMatch, Product


def _state(
    tmp_path: Path, images: dict[str, list[list[float]]]
) -> tuple[SqliteState, dict[int, str]]:
    """A collection state whose products have images with these vectors; image id ->
    product id."""
    state = SqliteState(tmp_path)
    changes = ChangeSet()
    hashes: list[str] = []
    vectors: list[np.ndarray] = []
    for pid, product_vectors in images.items():
        changes.products.append(Product(pid, pid, ()))
        for n, vector in enumerate(product_vectors):
            digest = f"{pid}-{n}"
            changes.images.append(ImageChange(pid, digest, n, digest, "ok"))
            hashes.append(digest)
            vectors.append(l2_normalize(np.asarray([vector], dtype=np.float32))[0])
    state.save_vectors(hashes, np.vstack(vectors))
    applied = state.apply(changes)
    return state, {image_id: pid for image_id, pid, _ in applied.upserts}


def _matches(query: np.ndarray, state: SqliteState, owner: dict[int, str]) -> list[ImageMatch]:
    ids = sorted(owner)
    vectors = state.vectors_of_images(ids, query.size)
    scores = vectors @ query
    matches = [ImageMatch(i, owner[i], float(s)) for i, s in zip(ids, scores, strict=True)]
    return sorted(matches, key=lambda m: -m.score)


def test_blend_judges_a_product_by_all_its_images(tmp_path: Path) -> None:
    # "a" has one image close to the query and one far off; "b" two images fairly close.
    state, owner = _state(tmp_path, {"a": [[1, 0.1, 0], [0, 0, 1]], "b": [[1, 0.5, 0]] * 2})
    query = l2_normalize(np.array([[1, 0, 0]], dtype=np.float32))[0]
    vectors = ProductVectors(state, 3)
    matches = _matches(query, state, owner)
    best = score_products(
        query, matches, options=SearchOptions(aggregation="max"), product_vectors=vectors
    )
    assert best["a"][0] > best["b"][0]
    blended = score_products(
        query, matches, options=SearchOptions(blend_weight=0.5), product_vectors=vectors
    )
    assert blended["b"][0] > blended["a"][0]
    # A single-image product, or blend_weight 1, scores its best image.
    assert blended["b"][0] == pytest.approx(best["b"][0], abs=1e-6)
    state.close()


def test_a_wrong_query_penalises_its_product_for_similar_queries(tmp_path: Path) -> None:
    state, owner = _state(tmp_path, {"a": [[1, 0.2, 0]], "b": [[1, 0.3, 0]]})
    query = l2_normalize(np.array([[1, 0, 0]], dtype=np.float32))[0]
    vectors = ProductVectors(state, 3)
    options = SearchOptions()

    def scores(q: np.ndarray) -> dict[str, tuple[float, int]]:
        return score_products(
            q, _matches(q, state, owner), options=options, product_vectors=vectors
        )

    before = scores(query)
    assert before["a"][0] > before["b"][0]
    state.add_negative("a", query)  # the cached negatives are reloaded after the change
    after = scores(query)
    assert after["a"][0] == pytest.approx(before["a"][0] - options.negative_penalty)
    assert after["b"][0] == before["b"][0]
    assert after["b"][0] > after["a"][0]
    # A query far from the wrong one is not penalised.
    other = l2_normalize(np.array([[0.6, 0, 0.8]], dtype=np.float32))[0]
    assert scores(other)["a"][0] == pytest.approx(float(vectors.of_products(["a"])["a"][0] @ other))
    state.close()


@pytest.mark.parametrize("memory_cap", [0, 1 << 20])
def test_product_vectors_read_the_same_from_memory_or_the_state(
    tmp_path: Path, memory_cap: int
) -> None:
    """Within the cap the vectors are a copy in memory; past it they are read per call."""
    state, owner = _state(tmp_path, {"a": [[1, 0, 0], [0, 1, 0]], "b": [[0, 0, 1]]})
    vectors = ProductVectors(state, 3, memory_cap=memory_cap)
    assert vectors.multi_image() == {"a"}
    grouped = vectors.of_products(["a", "b", "missing"])
    assert sorted(grouped) == ["a", "b"] and grouped["a"].shape == (2, 3)
    ids = sorted(owner, reverse=True)
    np.testing.assert_array_equal(vectors.vectors_of_images(ids), state.vectors_of_images(ids, 3))
    # A change (product b removed) is seen at the next read.
    state.apply(ChangeSet(removed_products=["b"]))
    assert sorted(vectors.of_products(["a", "b"])) == ["a"]
    state.close()


def test_penalty_grows_from_the_similarity_floor() -> None:
    options = SearchOptions(negative_penalty=0.4, negative_similarity=0.8)
    negatives = np.array([[1.0, 0.0]], dtype=np.float32)
    at = lambda cos: negative_penalty(  # noqa: E731
        np.array([cos, np.sqrt(1 - cos**2)], dtype=np.float32), negatives, options
    )
    assert at(0.7) == 0.0
    assert at(0.9) == pytest.approx(0.2, abs=1e-5)
    assert at(1.0) == pytest.approx(0.4, abs=1e-5)
