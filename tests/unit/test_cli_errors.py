"""The CLI prints library messages literally: Rich would read ``[serve]`` in
``pip install 'catalens[serve]'`` as markup and drop it."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from catalens.cli import app
from catalens.cli.base import print_error
from catalens.errors import ConfigError, MissingExtraError, missing_extra


def test_missing_extra_names_the_extra_and_the_install_command() -> None:
    error = missing_extra("serve", "serving", "uvicorn")
    assert isinstance(error, MissingExtraError)
    assert isinstance(error, ConfigError)
    assert error.extra == "serve"
    assert str(error) == (
        "serving needs the serve extra (uvicorn is missing): pip install 'catalens[serve]'"
    )


def test_print_error_keeps_square_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    print_error(missing_extra("pg", "the pgvector store"))
    printed = capsys.readouterr().err
    assert "pip install 'catalens[pg]'" in printed
    assert "[red]" not in printed


def test_serve_without_its_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # `import uvicorn` now fails
    result = CliRunner().invoke(app, ["serve"])
    assert result.exit_code == 1
    assert "pip install 'catalens[serve]'" in result.output
    assert "uvicorn is missing" in result.output
