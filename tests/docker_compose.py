"""``docker compose config`` on a deploy file, or a skip where this machine has no compose."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest


def compose_config(file: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """``docker compose -f FILE config --quiet`` with ``env`` over this process's environment
    (a value of ``""`` removes that variable)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client here")
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if version.returncode != 0:
        pytest.skip(f"no docker compose plugin: {version.stderr.strip() or version.stdout}")
    merged = {**os.environ, **env}
    merged = {key: value for key, value in merged.items() if value != ""}
    return subprocess.run(
        [docker, "compose", "-f", str(file), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=merged,
    )
