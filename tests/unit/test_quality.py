"""Query zoom views and domain centering: the pieces, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from catalens.search.query_crops import DomainCentering, center_crop, centered_scores


def test_center_crop_keeps_the_middle() -> None:
    image = Image.new("RGB", (100, 80), "white")
    image.paste((255, 0, 0), (40, 30, 60, 50))
    cropped = center_crop(image, 2.0)
    assert cropped.size == (50, 40)
    assert cropped.getpixel((25, 20)) == (255, 0, 0)
    assert center_crop(image, 1.0) is image


def test_running_mean_is_cumulative_then_exponential() -> None:
    centering = DomainCentering(dim=2, window=4)
    for vector in ([1.0, 0.0], [0.0, 1.0]):
        centering.observe(np.array(vector, dtype=np.float32))
    assert centering.current(min_queries=3) is None
    mean = centering.current(min_queries=2)
    assert mean is not None
    np.testing.assert_allclose(mean, [0.5, 0.5])
    for _ in range(40):
        centering.observe(np.array([1.0, 1.0], dtype=np.float32))
    later = centering.current(min_queries=2)
    assert later is not None
    np.testing.assert_allclose(later, [1.0, 1.0], atol=1e-4)  # old queries forgotten


def test_running_mean_survives_a_round_trip() -> None:
    centering = DomainCentering(dim=3)
    centering.observe(np.array([0.2, 0.4, 0.6], dtype=np.float32))
    restored = DomainCentering.loads(centering.dumps(), dim=3, window=2000)
    assert restored.count == 1
    np.testing.assert_allclose(restored.mean, centering.mean)
    assert DomainCentering.loads(centering.dumps(), dim=4, window=2000).count == 0


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_centering_removes_the_shared_component() -> None:
    shared = np.array([0.0, 0.0, 2.0], dtype=np.float32)  # what every photo has in common
    query = np.array([1.0, 0.0, 2.0], dtype=np.float32)
    right = np.array([1.0, 0.0, 0.1], dtype=np.float32)  # same product, catalog domain
    wrong = np.array([0.0, 0.5, 2.0], dtype=np.float32)  # another product, photo domain
    # Plain cosine prefers the candidate that only shares the domain component...
    assert _cos(query, wrong) > _cos(query, right)
    # ...centering on it ranks the one that shares the product component first.
    scores = centered_scores(query, np.vstack([right, wrong]), shared)
    assert scores[0] > scores[1]
    assert scores[0] == pytest.approx(_cos(query - shared, right - shared), abs=1e-5)
    assert scores[1] == pytest.approx(0.0, abs=1e-6)
