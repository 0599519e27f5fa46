"""The package metadata: what ``pip install`` reads, so that installing prints no warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return data


def test_license_is_an_spdx_string(project: dict[str, Any]) -> None:
    # A table (``{ text = ... }``) makes setuptools print a deprecation banner on every install.
    assert project["license"] == "Apache-2.0"


def test_every_declared_dependency_is_imported(project: dict[str, Any]) -> None:
    source = "\n".join(
        p.read_text(encoding="utf-8") for p in (PYPROJECT.parent / "src").rglob("*.py")
    )
    imported = {
        "pillow": "PIL",
        "faiss-cpu": "faiss",
        "pydantic-settings": "pydantic_settings",
    }
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()
        module = imported.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(from|import) {module}\b", source, re.MULTILINE), requirement
