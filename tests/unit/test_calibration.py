"""Calibrated verdicts fitted from held-out images, on hand-made clusters of vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from catalens.embedders.base import l2_normalize
from catalens.ledger.sqlite import SqliteState
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.search.calibration import MATCH, NO_MATCH, Calibration, features, fit
from catalens.search.query_crops import SearchOptions
from catalens.types import Product

DIM = 16
NOISE = 0.1


def _clusters(tmp_path: Path, products: int, images: int, *, seed: int = 0) -> np.ndarray:
    """A collection state of ``products`` products with ``images`` noisy images around a
    centre each; returns the centres (one product in the catalog per centre, plus 10 not in
    it)."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.normal(size=(products + 10, DIM)))
    state = SqliteState(tmp_path)
    changes = ChangeSet()
    hashes: list[str] = []
    vectors: list[np.ndarray] = []
    for p in range(products):
        changes.products.append(Product(f"p{p}", f"p{p}", ()))
        for v in range(images):
            digest = f"h{p}-{v}"
            changes.images.append(ImageChange(f"p{p}", digest, v, digest, "ok"))
            hashes.append(digest)
            vectors.append(l2_normalize((centres[p] + NOISE * rng.normal(size=DIM))[None])[0])
    state.save_vectors(hashes, np.vstack(vectors))
    state.apply(changes)
    state.close()
    return centres


MAX = SearchOptions(aggregation="max")


def _fit(tmp_path: Path) -> Calibration | None:
    state = SqliteState(tmp_path)
    try:
        return fit(state, dim=DIM, options=MAX, mean=None, photo_queries={})
    finally:
        state.close()


def _verdicts(
    tmp_path: Path, calibration: Calibration, centre: np.ndarray, rng: np.random.Generator
) -> list[tuple[str, float]]:
    """The verdicts on a noisy query around ``centre``, its products scored by best image."""
    query = l2_normalize((centre + NOISE * rng.normal(size=DIM))[None])[0]
    state = SqliteState(tmp_path)
    vectors = state.vectors_by_product(state.product_ids(), DIM)
    state.close()
    scores = sorted((float((v @ query).max()) for v in vectors.values()), reverse=True)
    return calibration.verdicts(scores[:11])


def test_features_by_hand() -> None:
    f = features([0.9, 0.5, 0.4])
    np.testing.assert_allclose(f[:, 0], [0.9, 0.5, 0.4])
    np.testing.assert_allclose(f[:, 1], [0.0, 0.4, 0.5])
    np.testing.assert_allclose(f[:, 3], [0.4, 0.1, 0.0])
    top = np.array([0.9, 0.5, 0.4])
    np.testing.assert_allclose(f[:, 2], (top - top.mean()) / top.std())


def test_held_out_images_give_verdicts_that_separate_in_and_out(tmp_path: Path) -> None:
    centres = _clusters(tmp_path, products=40, images=3)
    calibration = _fit(tmp_path)
    assert calibration is not None
    assert calibration.source == "held-out"
    assert calibration.positives >= 5 and calibration.negatives >= 5
    assert 0.5 <= calibration.match_probability < 1.0
    assert calibration.train_fpr <= 0.06
    rng = np.random.default_rng(1)
    inside = [_verdicts(tmp_path, calibration, centres[p], rng)[0][0] for p in range(40)]
    outside = [_verdicts(tmp_path, calibration, centres[40 + p], rng)[0][0] for p in range(10)]
    assert inside.count(MATCH) >= 20
    assert outside.count(MATCH) <= 2
    assert outside.count(NO_MATCH) + outside.count("ambiguous") >= 8


def test_only_the_top_result_can_be_a_match(tmp_path: Path) -> None:
    centres = _clusters(tmp_path, products=30, images=2)
    calibration = _fit(tmp_path)
    assert calibration is not None
    rng = np.random.default_rng(2)
    for p in range(10):
        verdicts = _verdicts(tmp_path, calibration, centres[p], rng)
        assert all(v != MATCH for v, _ in verdicts[1:])
        assert verdicts[0][1] >= max(prob for _, prob in verdicts[1:])


def test_round_trip_and_no_fit_without_held_out_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _clusters(tmp_path / "a", products=20, images=2)
    calibration = _fit(tmp_path / "a")
    assert calibration is not None
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))) == calibration
    (tmp_path / "b").mkdir()
    _clusters(tmp_path / "b", products=20, images=1)  # one image each: nothing to hold out
    assert _fit(tmp_path / "b") is None


@pytest.mark.parametrize("scores", [[], [0.5]])
def test_degenerate_score_lists(scores: list[float]) -> None:
    assert features(scores).shape == (len(scores), 4)


def test_left_out_products_are_not_fitted(tmp_path: Path) -> None:
    """An evaluation that leaves products out fits as if they were not in the catalog."""
    _clusters(tmp_path, products=40, images=3)
    state = SqliteState(tmp_path)
    try:
        whole = fit(state, dim=DIM, options=MAX, mean=None, photo_queries={})
        left_out = {f"p{p}" for p in range(10)}
        part = fit(state, dim=DIM, options=MAX, mean=None, photo_queries={}, exclude=left_out)
    finally:
        state.close()
    assert whole is not None and part is not None
    assert (whole.queries, part.queries) == (120, 90)
