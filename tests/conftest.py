"""Shared fixtures: an isolated CATALENS_HOME per test, and paths to ../shared data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MOBILENET = SHARED / "models" / "mobilenetv2-int8"
GROCERY = SHARED / "datasets" / "grocery-dev"


@pytest.fixture(autouse=True)
def isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Each test gets its own CATALENS_HOME and never reads the user's config."""
    home = tmp_path_factory.mktemp("catalens-home")
    monkeypatch.setenv("CATALENS_HOME", str(home))
    monkeypatch.delenv("CATALENS_CONFIG", raising=False)
    yield home


@pytest.fixture(scope="session")
def mobilenet_dir() -> Path:
    if not (MOBILENET / "model.json").is_file():
        pytest.skip(
            f"the offline test model is not at {MOBILENET} (needs ../shared beside the repo)"
        )
    return MOBILENET


@pytest.fixture(scope="session")
def grocery_dir() -> Path:
    if not (GROCERY / "manifest.csv").is_file():
        pytest.skip(f"grocery-dev is not at {GROCERY} (needs ../shared beside the repo)")
    return GROCERY
