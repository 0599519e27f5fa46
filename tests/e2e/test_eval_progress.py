"""``catalens eval`` shows progress bars with ETA on stderr (issue 12): for the query pass and
for each stage of a feedback curve, when stderr is a terminal or ``--progress`` asks, and
never on stdout, where ``--json`` prints the report."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from catalens.sample.catalog import SampleCatalog, generate_sample_catalog

# Rich's bar row: the stage, a count "done/total", the elapsed time, "eta" and the time left.
BAR = r"{stage}\s.*\b(\d+)/\1\b.*\d:\d\d:\d\d\s+eta\s+\d:\d\d:\d\d"


EVAL = (sys.executable, "-m", "catalens", "eval", "-c", "shop")


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, CATALENS_HOME=str(home), COLUMNS="200", TERM="xterm")


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "catalens", *args],
        env=_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("sample"), products=4)


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, sample: SampleCatalog, mobilenet_dir: Path
) -> Path:
    home = tmp_path_factory.mktemp("home")
    source = str(sample.catalog_csv)
    result = _run(home, "ingest", "-c", "shop", "--source", source, "--model", str(mobilenet_dir))
    assert result.returncode == 0, result.stderr
    return home


def test_forced_progress_goes_to_stderr_only(home: Path, sample: SampleCatalog) -> None:
    queries = str(sample.queries_csv)
    shown = _run(home, "eval", "-c", "shop", "--queries", queries, "--json", "--progress")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["queries"] == 8  # stdout is the report, nothing else
    assert re.search(BAR.format(stage="queries"), _plain(shown.stderr)), shown.stderr

    # stderr here is a pipe, not a terminal: no bars unless asked for.
    quiet = _run(home, "eval", "-c", "shop", "--queries", queries, "--json")
    assert quiet.returncode == 0, quiet.stderr
    assert "eta" not in quiet.stderr
    assert json.loads(quiet.stdout)["recall@1"] == json.loads(shown.stdout)["recall@1"]


def test_each_curve_stage_has_a_bar(home: Path, sample: SampleCatalog) -> None:
    queries = str(sample.queries_csv)
    shown = _run(
        home,
        *("eval", "-c", "shop", "--queries", queries, "--curve", "0,1"),
        *("--feedback-pool", queries, "--json", "--progress"),
    )
    assert shown.returncode == 0, shown.stderr
    assert [point["k"] for point in json.loads(shown.stdout)] == [0, 1]
    stderr = _plain(shown.stderr)
    for stage in ("eval K=0", "feedback", "eval K=1"):
        assert re.search(BAR.format(stage=re.escape(stage)), stderr), (stage, stderr)


def test_a_terminal_on_stderr_gets_bars_and_no_progress_silences_them(
    home: Path, sample: SampleCatalog
) -> None:
    def run_on_a_terminal(*extra: str) -> tuple[str, str]:
        # stdout stays a pipe (the report); stderr is the terminal the bars are drawn on.
        leader, follower = pty.openpty()
        try:
            process = subprocess.Popen(
                [*EVAL, "--queries", str(sample.queries_csv), "--json", *extra],
                env=_env(home),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=follower,
                text=True,
            )
            os.close(follower)
            terminal = b""
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                terminal += chunk
            stdout, _ = process.communicate(timeout=300)
        finally:
            os.close(leader)
        assert process.returncode == 0, terminal
        return stdout, _plain(terminal.decode(errors="replace"))

    stdout, terminal = run_on_a_terminal()
    assert json.loads(stdout)["queries"] == 8
    assert re.search(BAR.format(stage="queries"), terminal), terminal
    stdout, terminal = run_on_a_terminal("--no-progress")
    assert json.loads(stdout)["queries"] == 8
    assert "eta" not in terminal
