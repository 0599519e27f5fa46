"""The command line's own manners: ``delete`` confirms, choices are listed and enforced, and
``--help`` names what each option takes in words."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from catalens.cli.commands import app
from catalens.collection.config import SourceConfig
from catalens.sample.catalog import generate_sample_catalog
from catalens.service.service import CatalensService

runner = CliRunner()


@pytest.fixture
def home(
    isolated_home: Path, make_fake_service: Callable[..., CatalensService], tmp_path: Path
) -> Path:
    """CATALENS_HOME with one collection, ``shop``, made on the fake model."""
    sample = generate_sample_catalog(tmp_path / "sample", products=2)
    service = make_fake_service(home=isolated_home)
    service.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    service.close()
    return isolated_home


def _names(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "collections").iterdir())


def test_delete_without_yes_refuses_when_nobody_can_answer(home: Path) -> None:
    result = runner.invoke(app, ["delete", "-c", "shop"], input="y\n")
    assert result.exit_code == 1
    assert "not deleting 'shop'" in result.output
    assert "--yes" in result.output
    assert _names(home) == ["shop"]
    done = runner.invoke(app, ["delete", "-c", "shop", "--yes"])
    assert done.exit_code == 0, done.output
    assert "deleted shop" in done.output
    assert _names(home) == []


def test_delete_of_a_missing_collection_asks_nothing(home: Path) -> None:
    result = runner.invoke(app, ["delete", "-c", "nope"])
    assert result.exit_code == 1
    assert "no collection 'nope'" in result.output
    assert _names(home) == ["shop"]


def _delete_at_a_terminal(home: Path, answer: bytes) -> tuple[int, str]:
    """``catalens delete -c shop`` in a real pseudo-terminal, answering its question."""
    leader, follower = pty.openpty()
    env = dict(os.environ, CATALENS_HOME=str(home), COLUMNS="200")
    process = subprocess.Popen(
        [sys.executable, "-m", "catalens", "delete", "-c", "shop"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        if not answered and b"[y/N]" in seen:
            os.write(leader, answer)
            answered = True
        if process.poll() is not None and not ready:
            break
    os.close(leader)
    code = process.wait(timeout=30)
    return code, seen.decode(errors="replace")


def test_delete_asks_at_a_terminal(home: Path) -> None:
    code, text = _delete_at_a_terminal(home, b"n\n")
    assert "Delete collection 'shop'" in text, text
    assert code == 1
    assert "not deleted" in text
    assert _names(home) == ["shop"]
    code, text = _delete_at_a_terminal(home, b"y\n")
    assert code == 0, text
    assert "deleted shop" in text
    assert _names(home) == []


@pytest.mark.parametrize(
    ("command", "option", "choices"),
    [
        ("ingest", "--index", "flat|hnsw|ivf"),
        ("ingest", "--metric", "cosine|l2"),
        ("eval", "--order", "shuffled|file"),
    ],
)
def test_choices_are_listed_and_enforced(command: str, option: str, choices: str) -> None:
    shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert re.search(rf"{option}\s+<{re.escape(choices)}>", shown.output), shown.output
    wrong = runner.invoke(app, [command, "-c", "x", option, "nonsense"])
    assert wrong.exit_code == 2
    assert "nonsense" in wrong.output


def test_option_types_read_as_words() -> None:
    for command in ("ingest", "search", "delete", "feedback", "eval", "demo", "serve"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0
        options = [line for line in shown.output.splitlines() if re.search(r"│ .*--\w", line)]
        assert options, shown.output
        for line in options:
            assert not re.search(r"<(str|int|float|list\[str\]|path|int range)>", line), line
    ingest = runner.invoke(app, ["ingest", "--help"], env={"COLUMNS": "200"}).output
    assert re.search(r"--where\s+COLUMN=VALUE", ingest)
    assert re.search(r"--json\s+Print the report", ingest)  # a flag takes no value


def test_cli_reference_has_no_html_entities() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    assert not re.search(r"&(#x?[0-9a-fA-F]+|[a-z]+);", text)
    assert "<list[str]>" not in text
