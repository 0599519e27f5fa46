"""Confirmed photos score as evidence beside the catalog images (``search/photo_evidence.py``):
a fed product's shop photo does not outrank another product's catalog image by shop-ness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalens.embedders.base import l2_normalize
from catalens.ledger.sqlite import SqliteState
from catalens.ledger.state import CONFIRMED, ChangeSet, ImageChange, PhotoProvenance
from catalens.search import photo_evidence
from catalens.search.photo_evidence import ConfirmedPhotos, impostor_gap
from catalens.search.query_crops import SearchOptions
from catalens.search.scoring import ProductVectors, score_products
from catalens.types import ImageMatch, Product

# Axis 0 is what every shop photo shares (shelf, hands, light); 1-3 are products a, b, c.
SHELF_A = [0.8, 0.6, 0.0, 0.0]
SHELF_C = [0.8, 0.0, 0.0, 0.6]
CATALOG = {"a": [0.0, 1.0, 0.0, 0.0], "b": [0.0, 0.0, 1.0, 0.0], "c": [0.0, 0.0, 0.0, 1.0]}


def _unit(vector: list[float]) -> np.ndarray:
    return l2_normalize(np.asarray([vector], dtype=np.float32))[0]


def _state(tmp_path: Path, photos: dict[str, list[list[float]]]) -> tuple[SqliteState, dict]:
    """Products a, b, c with one catalog image each, and these confirmed photos (each
    searched with its own vector); image id -> product id."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = SqliteState(tmp_path)
    changes = ChangeSet()
    hashes, vectors = [], []
    for pid, vector in CATALOG.items():
        changes.products.append(Product(pid, pid, ()))
        changes.images.append(ImageChange(pid, f"{pid}.jpg", 0, f"cat-{pid}", "ok"))
        hashes.append(f"cat-{pid}")
        vectors.append(_unit(vector))
    for pid, shots in photos.items():
        for n, shot in enumerate(shots):
            digest = f"photo-{pid}-{n}"
            provenance = PhotoProvenance("correct", 0.0, query_vector=_unit(shot))
            changes.images.append(
                ImageChange(
                    pid, f"views/{digest}.jpg", 1_000_000 + n, digest, "ok",
                    origin=CONFIRMED, provenance=provenance,
                )
            )  # fmt: skip
            hashes.append(digest)
            vectors.append(_unit(shot))
    state.save_vectors(hashes, np.vstack(vectors))
    applied = state.apply(changes)
    return state, {image_id: pid for image_id, pid, _ in applied.upserts}


EVIDENCE = SearchOptions(photo_scoring="evidence")


def _scores(
    state: SqliteState, owner: dict, query: np.ndarray, options: SearchOptions = EVIDENCE
) -> dict[str, tuple[float, int]]:
    ids = sorted(owner)
    scores = state.vectors_of_images(ids, query.size) @ query
    matches = sorted(
        (ImageMatch(i, owner[i], float(s)) for i, s in zip(ids, scores, strict=True)),
        key=lambda m: -m.score,
    )
    return score_products(
        query, matches, options=options, product_vectors=ProductVectors(state, query.size)
    )


def _winner(scores: dict[str, tuple[float, int]]) -> str:
    return max(scores, key=lambda pid: scores[pid][0])


def test_a_shop_photo_of_a_does_not_take_a_query_of_b(tmp_path: Path) -> None:
    """A shop photo of b is closer to a's shop photo (0.86) than to b's catalog image
    (0.43): as one more view of a (blended with a's catalog image: 0.75), the photo made a
    win; as evidence it does not, because c's shop photo matches the query almost as well."""
    query = _unit([0.85, 0.3, 0.43, 0.0])
    cold, cold_owner = _state(tmp_path / "cold", {})
    before = _scores(cold, cold_owner, query)
    state, owner = _state(tmp_path / "fed", {"a": [SHELF_A], "c": [SHELF_C]})
    photo_a = next(i for i, pid in owner.items() if pid == "a" and i not in cold_owner)
    assert float(state.vectors_of_images([photo_a], 4)[0] @ query) > before["b"][0]
    after = _scores(state, owner, query)
    assert _winner(before) == _winner(after) == "b"
    # Scored as more views of a (the default, ``photo_scoring="views"``), a took it.
    assert _winner(_scores(state, owner, query, SearchOptions())) == "a"
    # b got no feedback: its score is its cold-start score, to the bit.
    assert after["b"] == before["b"]
    cold.close()
    state.close()


def test_a_genuine_photo_match_lifts_its_product(tmp_path: Path) -> None:
    """A query much like a's confirmed photo (and unlike c's): a wins although b's catalog
    image scores higher than a's."""
    query = _unit([0.75, 0.45, 0.48, 0.0])
    cold, cold_owner = _state(tmp_path / "cold", {})
    assert _winner(_scores(cold, cold_owner, query)) == "b"
    state, owner = _state(tmp_path / "fed", {"a": [SHELF_A], "c": [SHELF_C]})
    assert _winner(_scores(state, owner, query)) == "a"
    cold.close()
    state.close()


def test_without_confirmed_photos_scores_are_the_cold_start(tmp_path: Path) -> None:
    state, owner = _state(tmp_path, {})
    assert not ProductVectors(state, 4).current().photos
    query = _unit([0.3, 0.5, 0.4, 0.2])
    scores = _scores(state, owner, query)
    catalog = state.vectors_of_images(sorted(owner), 4) @ query
    assert sorted(s for s, _ in scores.values()) == sorted(float(c) for c in catalog)
    state.close()


def _photos(rng: np.random.Generator, products: int, shots: int) -> tuple[ConfirmedPhotos, dict]:
    owner, queries, vectors = {}, {}, {}
    image_id = 0
    for p in range(products):
        centre = rng.normal(size=8)
        for _ in range(shots):
            image_id += 1
            owner[image_id] = f"p{p}"
            vectors[image_id] = _unit(list(centre + 0.3 * rng.normal(size=8)))
            queries[image_id] = _unit(list(centre + 0.3 * rng.normal(size=8)))
    photos = ConfirmedPhotos(owner=owner, catalog_ids={}, queries=queries)
    return photos, vectors


def test_the_gap_is_the_impostor_margin_of_the_confirmed_queries() -> None:
    """Each confirmed query, its own product left out, gives the margin between the two
    other products whose photos it matches best; the gap is their quantile."""
    photos, vectors = _photos(np.random.default_rng(0), products=5, shots=4)
    calls: list[int] = []

    def vectors_of(ids: list[int]) -> np.ndarray:
        calls.append(len(ids))
        return np.vstack([vectors[i] for i in ids])

    margins = []
    for image_id, query in photos.queries.items():
        own = photos.owner[image_id]
        best = {}
        for other, pid in photos.owner.items():
            if pid != own:
                best[pid] = max(best.get(pid, -np.inf), float(vectors[other] @ query))
        first, second = sorted(best.values(), reverse=True)[:2]
        margins.append(first - second)
    expected = float(np.quantile(margins, photo_evidence.GAP_QUANTILE))
    assert impostor_gap(photos, vectors_of, None) == pytest.approx(expected, abs=1e-5)
    assert impostor_gap(photos, vectors_of, None) == pytest.approx(expected, abs=1e-5)
    assert len(calls) == 1  # measured once per domain mean
    mean = np.full(8, 0.1, dtype=np.float32)
    assert impostor_gap(photos, vectors_of, mean) != pytest.approx(expected, abs=1e-5)
    # The uncentred gap stays cached beside the domain mean's; a new mean replaces the old.
    impostor_gap(photos, vectors_of, None)
    impostor_gap(photos, vectors_of, mean * 2)
    assert len(calls) == 3 and set(photos.gaps) == {b"", (mean * 2).tobytes()}


def test_too_few_confirmed_queries_use_the_fallback_gap() -> None:
    photos, vectors = _photos(np.random.default_rng(1), products=2, shots=8)
    gap = impostor_gap(photos, lambda ids: np.vstack([vectors[i] for i in ids]), None)
    assert gap == photo_evidence.FALLBACK_GAP


def test_with_every_candidate_fed_the_ranking_is_views(tmp_path: Path) -> None:
    """When every candidate product has confirmed photos there is no product without them to
    protect: the scores are the ``views`` scores, so feedback on the whole catalog keeps
    its full gain (catalog + evidence alone cost 3.7 points there, docs/quality.md)."""
    shots = {"a": [SHELF_A], "b": [[0.8, 0.0, 0.6, 0.0]], "c": [SHELF_C]}
    state, owner = _state(tmp_path, shots)
    for query in ([0.85, 0.3, 0.43, 0.0], [0.75, 0.45, 0.48, 0.0], [0.2, 0.1, 0.3, 0.9]):
        unit = _unit(query)
        evidence = _scores(state, owner, unit)
        views = _scores(state, owner, unit, SearchOptions())
        assert evidence.keys() == views.keys()
        for pid, (score, image_id) in views.items():
            assert evidence[pid][0] == pytest.approx(score, abs=1e-6)
            assert evidence[pid][1] == image_id
    state.close()


def test_products_with_photos_keep_the_views_order_below_the_evidence(tmp_path: Path) -> None:
    """Half fed: the evidence decides between the best fed product and the best product
    without photos; among the fed products the order (and the gaps) are those of ``views``."""
    state, owner = _state(tmp_path, {"a": [SHELF_A], "c": [SHELF_C]})
    query = _unit([0.8, 0.45, 0.1, 0.4])
    evidence = _scores(state, owner, query)
    views = _scores(state, owner, query, SearchOptions())
    assert (views["a"][0] > views["c"][0]) == (evidence["a"][0] > evidence["c"][0])
    assert evidence["a"][0] - evidence["c"][0] == pytest.approx(
        views["a"][0] - views["c"][0], abs=1e-6
    )
    # b has no photos: its score is its catalog score under both.
    assert evidence["b"] == views["b"]
    state.close()
