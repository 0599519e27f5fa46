"""Feedback for half of the products (``catalens eval --feedback-share 0.5``) on real shopper
photos: the queries of the products that received confirmed photos and of those that did not
are scored apart. To stay near a minute it runs on the 31 packaged products (catalog, queries
and pool); the whole set's numbers are in docs/quality.md ("Feedback that generalises")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runs import run_catalens


@pytest.mark.slow
@pytest.mark.parametrize("scoring", ["views", "evidence"])
def test_feedback_on_half_the_products_is_scored_per_half(
    tmp_path: Path, grocery_dir: Path, mobilenet_dir: Path, scoring: str
) -> None:
    manifest = str(grocery_dir / "manifest.csv")
    packaged = ("--where", "is_packaged_sku=1")
    ingest = run_catalens(
        tmp_path,
        *("ingest", "--collection", "grocery", "--source", manifest),
        *("--model", str(mobilenet_dir), "--id-column", "item_id"),
        *("--image-column", "image_path", "--where", "role=gallery", *packaged),
        CATALENS_PHOTO_SCORING=scoring,
    )
    assert ingest.returncode == 0, ingest.stderr
    curve = run_catalens(
        tmp_path,
        *("eval", "--collection", "grocery", "--queries", manifest),
        *("--where", "role=query", *packaged),
        *("--feedback-pool", manifest, "--pool-where", "role=extra"),
        *("--pool-where", "is_packaged_sku=1", "--curve", "0,10"),
        *("--feedback-share", "0.5", "--seed", "0", "--json"),
        CATALENS_PHOTO_SCORING=scoring,
    )
    assert curve.returncode == 0, curve.stderr
    cold, fed = json.loads(curve.stdout)
    # 16 of the 31 products get 10 photos each; the cold start is scored on the same split.
    assert (cold["fed"], fed["fed"]) == (0, 160)
    assert cold["feedback_share"] == fed["feedback_share"] == 0.5
    for point in (cold, fed):
        halves = point["feedback_split"]
        assert set(halves) == {"with_feedback", "without_feedback"}
        sizes = [halves[h]["queries"] for h in ("with_feedback", "without_feedback")]
        assert sum(sizes) == point["queries"] > 90 and min(sizes) > 30
    before, after = cold["feedback_split"], fed["feedback_split"]
    assert before["with_feedback"]["queries"] == after["with_feedback"]["queries"]
    fed_gain = after["with_feedback"]["recall@1"] - before["with_feedback"]["recall@1"]
    others_gain = after["without_feedback"]["recall@1"] - before["without_feedback"]["recall@1"]
    if scoring == "views":
        # The products that received photos gain what the whole-catalog curve shows...
        assert fed_gain >= 0.1
        # ...and take first place from the others (docs/quality.md).
        assert others_gain < 0.0
        return
    # As evidence (search/photo_evidence.py) the others keep at least their cold start
    # (+0.018 here). The fed products lose instead on this subset (-0.200: milk cartons whose
    # shelf photos look alike), which is why it is not the default (docs/quality.md).
    assert others_gain >= 0.0, f"others {others_gain:+.3f}, fed {fed_gain:+.3f}"
