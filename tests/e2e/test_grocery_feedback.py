"""The feedback loop on real shopper photos: confirmed photos from grocery-dev's ``extra``
set fed through the real feedback path, then the ``val`` photos searched (``catalens eval
--curve``). To stay near a minute it runs on the 31 packaged products' photos; the whole
set's numbers are in docs/quality.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _catalens(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CATALENS_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "catalens", *args], env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_confirmed_photos_lift_recall(
    tmp_path: Path, grocery_dir: Path, mobilenet_dir: Path
) -> None:
    manifest = str(grocery_dir / "manifest.csv")
    ingest = _catalens(
        tmp_path,
        *("ingest", "--collection", "grocery", "--source", manifest),
        *("--model", str(mobilenet_dir), "--id-column", "item_id"),
        *("--image-column", "image_path", "--where", "role=gallery"),
    )
    assert ingest.returncode == 0, ingest.stderr
    curve = _catalens(
        tmp_path,
        *("eval", "--collection", "grocery", "--queries", manifest),
        *("--where", "role=query", "--where", "is_packaged_sku=1"),
        *("--feedback-pool", manifest, "--pool-where", "role=extra"),
        *("--pool-where", "is_packaged_sku=1", "--curve", "0,10", "--json"),
    )
    assert curve.returncode == 0, curve.stderr
    cold, fed = json.loads(curve.stdout)
    assert (cold["k"], cold["fed"]) == (0, 0)
    assert (fed["k"], fed["fed"]) == (10, 310)
    assert cold["queries"] == fed["queries"] > 90
    assert fed["recall@1"] >= cold["recall@1"] + 0.1
    assert fed["recall@5"] >= cold["recall@5"]
    assert fed["mrr"] > cold["mrr"]
    # With confirmed photos the collection is calibrated, and a match is mostly right.
    assert fed["calibrated"] is True
    if fed["matches"]:
        assert fed["match_precision"] >= 0.7
    # The curve ran on copies: the collection itself is as ingested.
    listing = json.loads(_catalens(tmp_path, "collections", "--json").stdout)
    assert [(c["name"], c["images"]) for c in listing] == [("grocery", 81)]
