"""Fixtures shared by the browser tests (``test_browser.py``, ``test_browser_catalog.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from test_browser import ARTIFACTS, chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def artifacts() -> Path:
    """Where screenshots go (``test-artifacts/`` at the repo root)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
