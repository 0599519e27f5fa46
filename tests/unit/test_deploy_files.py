"""deploy/compose.yaml and deploy/Dockerfile are wired together (no Docker engine needed):
ports, the DSN pointing at the db service, volumes, health checks, start order."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from catalens.settings import Settings
from docker_compose import compose_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def dockerfile() -> str:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    return text.replace("\\\n", " ")  # join continuation lines


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when VAR is unset)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def _named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume, for short-syntax ``name:/path`` volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if not source.startswith((".", "/", "~")):
            mounts[target] = source
    return mounts


def test_services_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"catalens", "db"}
    assert services["db"]["image"].startswith("pgvector/pgvector:pg16")
    assert services["catalens"]["depends_on"]["db"]["condition"] == "service_healthy"


def test_the_dsn_points_at_the_db_service(compose: dict[str, Any]) -> None:
    app, db = _env(compose["services"]["catalens"]), _env(compose["services"]["db"])
    dsn = urlsplit(app["CATALENS_STORE"])
    assert dsn.scheme in ("postgresql", "postgres")
    assert dsn.hostname == "db"
    assert (dsn.port or 5432) == 5432
    assert dsn.username == db["POSTGRES_USER"]
    assert dsn.path.lstrip("/") == db["POSTGRES_DB"]
    # The password travels in PGPASSWORD, not in the DSN (which collections store on disk).
    assert dsn.password is None
    assert _default(app["PGPASSWORD"]) == _default(db["POSTGRES_PASSWORD"])
    assert app["CATALENS_INDEX"] == "hnsw"


def test_ports(compose: dict[str, Any], dockerfile: str) -> None:
    app = compose["services"]["catalens"]
    assert "8000:8000" in [str(p) for p in app["ports"]]
    assert _env(app)["CATALENS_PORT"] == "8000"
    assert _env(app)["CATALENS_HOST"] == "0.0.0.0"
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.MULTILINE)
    assert "ports" not in compose["services"]["db"]  # the database stays on the compose network


def _interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ``${VAR:?message}`` (required) and ``${VAR:-default}``, as compose reads them."""

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.group(1), match.group(2), match.group(3)
        if environ.get(name):
            return environ[name]
        if kind == ":?":
            raise LookupError(rest)
        return rest

    return re.sub(r"\$\{(\w+)(:\?|:-)([^}]*)\}", one, value)


def test_the_service_on_every_interface_needs_a_key(compose: dict[str, Any]) -> None:
    """Issue 13 item 9: served on 0.0.0.0, the app gets API keys, and compose refuses to
    start without one (no default key that every deployment would share)."""
    app = _env(compose["services"]["catalens"])
    assert app["CATALENS_HOST"] == "0.0.0.0"
    keys = app["CATALENS_API_KEYS"]
    with pytest.raises(LookupError, match="CATALENS_API_KEY"):
        _interpolate(keys, {})
    assert json.loads(_interpolate(keys, {"CATALENS_API_KEY": "k-123"})) == ["k-123"]
    assert Settings(api_keys=json.loads(_interpolate(keys, {"CATALENS_API_KEY": "k"}))).api_keys
    assert "CATALENS_CORS_ORIGINS" not in app or "*" not in app["CATALENS_CORS_ORIGINS"]


def test_volumes(compose: dict[str, Any], dockerfile: str) -> None:
    declared = set(compose["volumes"])
    app = _named_mounts(compose["services"]["catalens"])
    db = _named_mounts(compose["services"]["db"])
    assert "/var/lib/postgresql/data" in db
    assert "/home/catalens/.cache" in app  # the model cache
    assert _env(compose["services"]["catalens"])["CATALENS_HOME"] in app
    assert set(app.values()) | set(db.values()) <= declared
    volume = re.search(r"^VOLUME \[(.*)\]$", dockerfile, re.MULTILINE)
    assert volume is not None
    assert '"/home/catalens/.cache"' in volume.group(1)


def test_health_checks(compose: dict[str, Any], dockerfile: str) -> None:
    db_check = " ".join(compose["services"]["db"]["healthcheck"]["test"])
    assert "pg_isready" in db_check
    app_check = " ".join(compose["services"]["catalens"]["healthcheck"]["test"])
    # /ready answers 503 until the models are loaded: a replica is healthy once it can search.
    assert "127.0.0.1:8000/ready" in app_check
    healthcheck = re.search(r"^HEALTHCHECK .*$", dockerfile, re.MULTILINE)
    assert healthcheck is not None
    assert "127.0.0.1:8000/ready" in healthcheck.group(0)


def test_dockerfile(compose: dict[str, Any], dockerfile: str) -> None:
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert dockerfile.index(f"USER {users[-1]}") < dockerfile.index("CMD [")
    install = " ".join(re.findall(r"^RUN pip install .*$", dockerfile, re.MULTILINE))
    assert "download.pytorch.org/whl/cpu" in install
    assert "-c constraints.txt" in install
    assert '".[serve,pg,clip]"' in install
    # What the build copies exists, relative to the context compose gives it.
    build = compose["services"]["catalens"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO
    assert (context / build["dockerfile"]).is_file()
    for line in re.findall(r"^COPY (.*) \S+$", dockerfile, re.MULTILINE):
        for source in line.split():
            assert (context / source).exists(), source


def test_docker_compose_config_accepts_it() -> None:
    checked = compose_config(DEPLOY / "compose.yaml", {"CATALENS_API_KEY": "test-key"})
    assert checked.returncode == 0, checked.stderr
    refused = compose_config(DEPLOY / "compose.yaml", {"CATALENS_API_KEY": ""})
    assert refused.returncode != 0 and "CATALENS_API_KEY" in refused.stderr
