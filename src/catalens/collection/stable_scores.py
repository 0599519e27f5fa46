"""Scores that hold still: what a user's threshold and the calibrated probability read.

Domain centering (``search/query_crops.py``) ranks better, but it moves as queries arrive:
the centred score of one photo went from 0.752 to 0.538 over a day of queries, so a
threshold on it means something else every hour. The candidates' uncentred cosines do not
move (the catalog and the photo fixed), so:

- the calibration is fitted on, and judges, the uncentred product scores of a query's
  candidates, ranked among themselves (``search/calibration.py``, ``space`` ``cosine``);
- a hit's ``cosine`` is the uncentred cosine of the query with the image it shows;
- a user's threshold applies to the calibrated probability when the collection has a
  stable calibration and the query is a photo, else to that cosine (``threshold_value``).

The ranking shown stays the centred one.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from catalens.search.calibration import Calibration, NoCalibration
from catalens.search.query_crops import SearchOptions
from catalens.search.scoring import ProductFacts, ProductScores, score_products
from catalens.types import ImageMatch

__all__ = ["Judged", "judge"]


@dataclass(frozen=True)
class Judged:
    """The stable side of one search: per candidate product, its verdict and probability
    (empty without a calibration), and per candidate image, its uncentred cosine."""

    verdicts: Mapping[str, tuple[str, float]]
    cosines: Mapping[int, float]
    use_probability: bool
    """Whether a threshold reads the probability (else the cosine)."""
    is_cosine: bool = True
    """Whether the store's scores are cosines (else the metric's own score)."""

    def cosine(self, image_id: int) -> float | None:
        return self.cosines.get(image_id) if self.is_cosine else None

    def threshold_value(self, product_id: str, image_id: int) -> float:
        """The quantity a user's threshold is compared with for this hit."""
        if self.use_probability:
            return self.verdicts.get(product_id, ("", 0.0))[1]
        return self.cosines.get(image_id, -1.0)


def plain_product_scores(
    query: NDArray[np.float32],
    plain: list[ImageMatch],
    *,
    options: SearchOptions,
    facts: ProductFacts,
    cosine: bool,
    exclude: AbstractSet[str] = frozenset(),
) -> ProductScores:
    """Each candidate product's uncentred score (aggregated and penalised as the search
    does, without the domain mean), products in ``exclude`` left out."""
    scores = score_products(
        query, plain, options=options, product_vectors=facts, mean=None, cosine=cosine
    )
    for pid in exclude & scores.keys():
        del scores[pid]
    return scores


def judge(
    calibration: Calibration | NoCalibration,
    query: NDArray[np.float32],
    plain: list[ImageMatch],
    candidates: AbstractSet[str],
    *,
    options: SearchOptions,
    facts: ProductFacts,
    cosine: bool,
    photo: bool,
) -> Judged:
    """Verdicts of the ``candidates`` (the products the search kept: exclusions and filters
    applied) from their uncentred scores, and the candidates' image cosines. A calibration
    fitted on centred scores (made before this) judges nothing: the next refit replaces it."""
    cosines = {m.image_id: float(m.score) for m in plain}
    stable = isinstance(calibration, Calibration) and calibration.stable
    if not stable or not cosine:
        return Judged({}, cosines, use_probability=False, is_cosine=cosine)
    scores = plain_product_scores(query, plain, options=options, facts=facts, cosine=cosine)
    kept = {pid: s for pid, (s, _) in scores.items() if pid in candidates}
    verdicts = calibration.by_product(kept)
    return Judged(verdicts, cosines, use_probability=photo)
