"""``catalens`` run as a user runs it: a subprocess on a given home, its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_catalens(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m catalens ARGS`` with ``CATALENS_HOME=home`` and the ``env`` variables set."""
    return subprocess.run(
        [sys.executable, "-m", "catalens", *args],
        env={**os.environ, "CATALENS_HOME": str(home), **env},
        capture_output=True,
        text=True,
    )
