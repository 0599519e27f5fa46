"""``catalens serve`` with a model it cannot load (offline, not cached) says so in one line:
in its log and in ``GET /ready``, with no traceback and no private class names (issue 12's
quick start, run offline)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from catalens.api.app import create_app
from catalens.embedders import forget_failed_loads
from catalens.settings import Settings

SPEC = "catalens-test/no-such-clip"  # not in any cache


def test_a_model_that_cannot_load_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network at all: the hub is not tried
    forget_failed_loads()
    app = create_app(Settings(home=tmp_path / "home", model=SPEC))
    with caplog.at_level(logging.INFO), TestClient(app) as client:
        assert app.state.catalens.loaded.wait(60)
        ready = client.get("/ready")
    forget_failed_loads()
    assert ready.status_code == 503
    detail = ready.json()["detail"]
    assert SPEC in detail and "HF_HUB_OFFLINE" in detail
    assert "Error:" not in detail  # the message, not the exception's class name
    failed = [r for r in caplog.records if "loading models failed" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is None, "an expected failure needs no traceback"
    assert SPEC in failed[0].getMessage() and "\n" not in failed[0].getMessage()
