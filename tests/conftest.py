"""Shared fixtures: an isolated CATALENS_HOME per test, paths to ../shared data, and services
on the fake embedder of ``fakes.py`` (no model files needed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from catalens.service.service import CatalensService

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


@pytest.fixture
def fake_embedder() -> Any:
    """A fresh ``tests/fakes.FakeEmbedder``: deterministic, 64-d, no model files."""
    from fakes import FakeEmbedder

    return FakeEmbedder()


@pytest.fixture
def make_fake_service(
    tmp_path: Path, fake_embedder: Any
) -> Iterator[Callable[..., CatalensService]]:
    """``make_fake_service(**overrides)``: a service on the fake embedder (``fake_embedder``,
    shared by every service made here) in a fresh home under ``tmp_path``, closed at the end.
    ``home=`` reopens an earlier home; other overrides are ``Settings`` fields."""
    from fakes import build_fake_service, fake_settings

    made: list[CatalensService] = []

    def make(*, home: Path | None = None, **overrides: object) -> CatalensService:
        settings = fake_settings(home or tmp_path / f"home-{len(made)}", **overrides)
        service, _ = build_fake_service(settings, fake_embedder)
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()


@pytest.fixture
def fake_service(make_fake_service: Callable[..., CatalensService]) -> CatalensService:
    """A service on the fake embedder with plain single-view cosine (see ``fakes.py``)."""
    return make_fake_service()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """One throwaway PostgreSQL + pgvector (pgserver) for the session, shared by the store
    contract and the pgvector tests; it lives outside pytest's private tmp because the server
    runs as another user when pytest runs as root. Skips when pgserver cannot start."""
    import os
    import shutil
    import tempfile

    from catalens.errors import CatalensError

    try:
        import psycopg

        from catalens.stores.pg_local import local_dsn, stop_local
    except ImportError as exc:
        pytest.skip(f"the pg extra is not installed: {exc}")
    root = Path(tempfile.gettempdir()) / f"catalens-pgtest-{os.getpid()}"
    try:
        dsn = local_dsn(root / "data")
    except CatalensError as exc:  # StoreError, or MissingExtraError without pgserver
        pytest.skip(f"PostgreSQL with pgvector could not start through pgserver: {exc}")
    with psycopg.connect(dsn, autocommit=True) as conn:  # a throwaway server: no durability
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {setting} = off")
        conn.execute("SELECT pg_reload_conf()")
    yield dsn
    stop_local(root / "data")
    shutil.rmtree(root, ignore_errors=True)
