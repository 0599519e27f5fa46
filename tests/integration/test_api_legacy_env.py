"""The seeds' environment variables (DEVICE, SIMILARITY_THRESHOLD, ...) and ``catalens serve``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalens.api.app import app_from_env
from catalens.api.legacy_env import LEGACY_ENV, legacy_overrides, settings_from_env
from catalens.cli.commands import app as cli

SEED_ENV = {
    "DEVICE": "cpu",
    "SIMILARITY_THRESHOLD": "0.10",
    "BATCH_SIZE": "64",
    "MAX_RESULTS": "7",
    "CACHE_REFRESH_SECONDS": "1800",
    "NESTJS_SERVER": "http://localhost:3000/",
}


def test_every_seed_variable_maps_to_a_setting() -> None:
    assert legacy_overrides(SEED_ENV) == {
        "device": "cpu",
        "threshold": "0.10",
        "batch_size": "64",
        "top_k": "7",
        "refresh_seconds": "1800",
        "rest_url": "http://localhost:3000",
    }
    assert set(LEGACY_ENV) == set(SEED_ENV)


def test_catalens_settings_win() -> None:
    env = {**SEED_ENV, "catalens_device": "cuda", "CATALENS_TOP_K": "3", "BATCH_SIZE": " "}
    overrides = legacy_overrides(env, configured={"threshold"})
    assert "device" not in overrides and "top_k" not in overrides
    assert "threshold" not in overrides and "batch_size" not in overrides
    assert overrides["refresh_seconds"] == "1800"


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SEED_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CATALENS_BATCH_SIZE", "16")
    settings = settings_from_env(port=9000, host=None)
    assert settings.device == "cpu"
    assert settings.threshold == pytest.approx(0.10)
    assert settings.batch_size == 16
    assert settings.top_k == 7
    assert settings.refresh_seconds == 1800
    assert settings.rest_url == "http://localhost:3000"
    assert settings.port == 9000 and settings.host == "127.0.0.1"


def test_toml_config_wins_over_seed_variables(
    monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    (isolated_home / "catalens.toml").write_text("threshold = 0.5\n", encoding="utf-8")
    monkeypatch.setenv("SIMILARITY_THRESHOLD", "0.1")
    monkeypatch.setenv("MAX_RESULTS", "4")
    settings = settings_from_env()
    assert settings.threshold == 0.5 and settings.top_k == 4


def test_app_from_env_uses_the_seed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_RESULTS", "9")
    app = app_from_env()
    assert app.state.settings.top_k == 9
    assert "/v1/collections/{name}/search" in app.openapi()["paths"]


def test_serve_command_is_listed() -> None:
    result = CliRunner().invoke(cli, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--host" in result.output and "--port" in result.output and "--workers" in result.output
