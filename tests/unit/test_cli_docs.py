"""docs/cli.md is generated from the CLI itself; this fails when it goes stale.

Regenerate with `make docs`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_cli_reference_is_current(tmp_path: Path) -> None:
    generated = tmp_path / "cli.md"
    typer_cli = Path(sys.executable).parent / "typer"
    subprocess.run(
        [
            str(typer_cli),
            "catalens.cli.commands",
            "utils",
            "docs",
            "--name",
            "catalens",
            "--title",
            "catalens CLI reference",
            "--output",
            str(generated),
        ],
        check=True,
        capture_output=True,
    )
    current = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    assert generated.read_text(encoding="utf-8") == current, "docs/cli.md is stale: run make docs"
