"""Settings come from CATALENS_* variables, then an optional TOML file, then defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalens.settings import Settings


def test_toml_file_in_home_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CATALENS_HOME", str(tmp_path))
    (tmp_path / "catalens.toml").write_text(
        'index = "hnsw"\nbatch_size = 8\nmodel = "m-from-file"\n'
    )
    monkeypatch.setenv("CATALENS_BATCH_SIZE", "4")
    settings = Settings()
    assert settings.home == tmp_path
    assert settings.index == "hnsw"
    assert settings.model == "m-from-file"
    assert settings.batch_size == 4
    assert settings.collections_dir == tmp_path / "collections"


def test_explicit_config_file_and_list_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text("query_zooms = [1.0]\ncentering = false\n")
    monkeypatch.setenv("CATALENS_CONFIG", str(config))
    monkeypatch.setenv("CATALENS_API_KEYS", '["k1", "k2"]')
    settings = Settings()
    assert settings.query_zooms == (1.0,)
    assert settings.centering is False
    assert settings.api_keys == ("k1", "k2")


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("CATALENS_INDEX", "annoy")
    with pytest.raises(ValidationError, match="index"):
        Settings()
