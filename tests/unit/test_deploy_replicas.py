"""deploy/compose.replicas.yaml, its nginx.replicas.conf and Dockerfile.ray are wired
together (no Docker engine needed): replicas behind the load balancer, one shared DSN,
health checks on /ready, the Ray head and worker, the models made once and mounted read-only."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from catalens.settings import Settings
from docker_compose import compose_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
API = ("api-a", "api-b")
RAY = ("ray-head", "ray-worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text = (DEPLOY / "compose.replicas.yaml").read_text(encoding="utf-8")
    data: dict[str, Any] = yaml.safe_load(text)  # resolves the x-* anchors and `<<:` merges
    return data


@pytest.fixture(scope="module")
def nginx() -> str:
    return (DEPLOY / "nginx.replicas.conf").read_text(encoding="utf-8")


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when VAR is unset)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


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


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (source, read-only) for short-syntax volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        parts = str(volume).split(":")
        mounts[parts[1]] = (parts[0], len(parts) > 2 and parts[2] == "ro")
    return mounts


def test_services_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"db", "models", "lb", *API, *RAY}
    assert services["db"]["image"].startswith("pgvector/pgvector:pg16")
    for name in API:
        depends = services[name]["depends_on"]
        assert depends["db"]["condition"] == "service_healthy"
        assert depends["models"]["condition"] == "service_completed_successfully"
    assert services["models"]["restart"] == "no"  # a one-shot, not a server
    for name in API:
        assert services["lb"]["depends_on"][name]["condition"] == "service_healthy"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_every_process_shares_one_dsn(compose: dict[str, Any]) -> None:
    services = compose["services"]
    db = _env(services["db"])
    stores = {_env(services[name])["CATALENS_STORE"] for name in (*API, *RAY)}
    assert len(stores) == 1
    dsn = urlsplit(stores.pop())
    assert dsn.scheme in ("postgresql", "postgres")
    assert dsn.hostname == "db"
    assert (dsn.port or 5432) == 5432
    assert dsn.username == db["POSTGRES_USER"]
    assert dsn.path.lstrip("/") == db["POSTGRES_DB"]
    assert dsn.password is None  # the password travels in PGPASSWORD
    for name in (*API, *RAY):
        env = _env(services[name])
        assert _default(env["PGPASSWORD"]) == _default(db["POSTGRES_PASSWORD"])
        assert env["CATALENS_INDEX"] == "hnsw"
    # Every replica checks the same API key, which compose requires (`:?`) to be set.
    keys = {_env(services[name])["CATALENS_API_KEYS"] for name in API}
    assert len(keys) == 1
    assert "${CATALENS_API_KEY:?" in keys.pop()


def test_every_replica_requires_a_key(compose: dict[str, Any]) -> None:
    """Served behind a published load balancer, no replica starts without an API key: compose
    refuses an unset or empty CATALENS_API_KEY (no ``[]`` default, which would leave the write
    and admin routes open), and a set one reaches every replica as a one-key list."""
    for name in API:
        keys = _env(compose["services"][name])["CATALENS_API_KEYS"]
        for unset in ({}, {"CATALENS_API_KEY": ""}):
            with pytest.raises(LookupError, match="set CATALENS_API_KEY"):
                _interpolate(keys, unset)
        resolved = json.loads(_interpolate(keys, {"CATALENS_API_KEY": "k-123"}))
        assert resolved == ["k-123"]
        assert Settings(api_keys=resolved).api_keys


def test_replicas_are_stateless(compose: dict[str, Any]) -> None:
    services = compose["services"]
    declared = set(compose["volumes"])
    for name in (*API, *RAY):
        env = _env(services[name])
        mounts = _mounts(services[name])
        # CATALENS_HOME is not a volume: nothing a replica writes there has to survive it.
        assert env["CATALENS_HOME"] not in mounts
        models = f"{env['CATALENS_HOME']}/models"
        assert mounts[models] == ("models", True)
        assert mounts["/home/catalens/.cache"] == ("model-cache", True)
        assert env["CATALENS_ONNX_AUTO_EXPORT"] == "false"
        assert {source for source, _ in mounts.values() if not source.startswith(".")} <= declared
    made = _mounts(services["models"])
    assert made["/home/catalens/data/models"] == ("models", False)
    assert made["/home/catalens/.cache"] == ("model-cache", False)
    assert "/var/lib/postgresql/data" in _mounts(services["db"])


def test_health_checks_ask_ready(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in API:
        check = " ".join(services[name]["healthcheck"]["test"])
        assert "127.0.0.1:8000/ready" in check
        assert _env(services[name])["CATALENS_PORT"] == "8000"
    assert "http://127.0.0.1/ready" in " ".join(services["lb"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert "ray status" in " ".join(services["ray-head"]["healthcheck"]["test"])


def test_only_the_load_balancer_is_published(compose: dict[str, Any], nginx: str) -> None:
    services = compose["services"]
    assert [str(p) for p in services["lb"]["ports"]] == ["8000:80"]
    for name in ("db", "models", *API, *RAY):
        assert "ports" not in services[name], name
    assert re.search(r"^\s*listen 80;$", nginx, re.MULTILINE)
    conf = _mounts(services["lb"])["/etc/nginx/conf.d/default.conf"]
    assert conf == ("./nginx.replicas.conf", True)


def test_nginx_balances_every_replica(nginx: str) -> None:
    upstream = re.search(r"upstream catalens \{(.*?)\}", nginx, re.DOTALL)
    assert upstream is not None
    servers = re.findall(r"^\s*server (\S+?)(?: [^;]*)?;$", upstream.group(1), re.MULTILINE)
    assert sorted(servers) == [f"{name}:8000" for name in API]
    assert "proxy_pass http://catalens;" in nginx
    # A replica still loading its model (503 on /ready and searches) is skipped.
    assert re.search(r"proxy_next_upstream [^;]*http_503", nginx)


def test_ray_nodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    head = " ".join(services["ray-head"]["command"])
    worker = " ".join(services["ray-worker"]["command"])
    port = re.search(r"--port=(\d+)", head)
    assert port is not None and "--head" in head and "--block" in head
    assert f"--address=ray-head:{port.group(1)}" in worker and "--block" in worker
    for name in RAY:
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile.ray"
        assert services[name]["shm_size"]  # Ray's object store lives in /dev/shm
        env = _env(services[name])
        assert env["RAY_AUTH_MODE"] == "token"  # one required token on every node
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")


def test_ray_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile.ray").read_text(encoding="utf-8").replace("\\\n", " ")
    assert re.search(r"^FROM python:3\.11-slim", text, re.MULTILINE)  # the API image's Python
    install = " ".join(re.findall(r"^RUN pip install .*$", text, re.MULTILINE))
    assert "-c constraints.txt" in install
    extras = re.search(r'"\.\[([\w,]+)\]"', install)
    assert extras is not None
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    optional = declared["project"]["optional-dependencies"]
    assert "ray" in extras.group(1).split(",")
    assert set(extras.group(1).split(",")) <= set(optional)
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    for line in re.findall(r"^COPY (.*) \S+$", text, re.MULTILINE):
        for source in line.split():
            assert (REPO / source).exists(), source


def test_docker_compose_config_accepts_it() -> None:
    # The file refuses to start without a key and a Ray token: give both.
    keyed = {"CATALENS_API_KEY": "test-key", "RAY_AUTH_TOKEN": "test-token"}
    checked = compose_config(DEPLOY / "compose.replicas.yaml", keyed)
    assert checked.returncode == 0, checked.stderr
