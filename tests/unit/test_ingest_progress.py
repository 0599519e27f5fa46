"""An ingest reports every stage it spends time in, the cold-start calibration after the
embedding included (issue 12: it was a silent minute after the last bar)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import generate_sample_catalog
from catalens.service.service import CatalensService


def test_the_calibration_after_an_ingest_shows_progress(
    make_fake_service: Callable[..., CatalensService], tmp_path: Path
) -> None:
    sample = generate_sample_catalog(tmp_path / "sample", products=4)
    service = make_fake_service(calibration_views=3)
    seen: list[tuple[str, int, int | None]] = []
    service.ingest(
        "shop",
        SourceConfig(location=str(sample.catalog_csv)),
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    calibrate = [(done, total) for stage, done, total in seen if stage == "calibrate"]
    assert calibrate, [stage for stage, _, _ in seen]
    assert calibrate[0] == (0, 4)
    assert calibrate[-1] == (4, 4)
    assert service.collection("shop").info()["calibrated"] is True
    stages = list(dict.fromkeys(stage for stage, _, _ in seen))
    assert stages[-1] == "calibrate"  # after the embedding: the last thing an ingest does

    # A re-run that changes nothing does not calibrate again, so shows no such stage.
    seen.clear()
    service.ingest(
        "shop", SourceConfig(location=str(sample.catalog_csv)), progress=lambda *a: seen.append(a)
    )
    assert "calibrate" not in {stage for stage, _, _ in seen}
