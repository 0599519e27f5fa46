"""Logging of ``catalens serve``: time and level on every line, JSON lines, request ids,
the level setting, and no API key or DSN password ever written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import httpx
from serve_processes import catalens_serve

from catalens.settings import Settings

API_KEY = "key-Zq81-never-logged"
DSN_PASSWORD = "pw-Hx42-never-logged"
DSN = f"postgresql://catalens:{DSN_PASSWORD}@db.internal:5432/catalens"


def _log_lines(settings: dict[str, object], script: str) -> list[str]:
    """The lines a fresh interpreter writes after applying ``log_config`` for ``settings``."""
    program = textwrap.dedent(
        f"""
        import logging, logging.config
        from catalens.api.logs import log_config
        from catalens.settings import Settings
        logging.config.dictConfig(log_config(Settings(**{settings!r})))
        log = logging.getLogger("catalens.test")
        """
    ) + textwrap.dedent(script)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stderr.splitlines()


def test_json_lines_carry_time_level_message_and_request_id() -> None:
    lines = _log_lines(
        {"log_format": "json"},
        """
        log.info("hello %s", "there")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("it broke")
        """,
    )
    entries = [json.loads(line) for line in lines]
    assert [entry["message"] for entry in entries] == ["hello there", "it broke"]
    assert [entry["level"] for entry in entries] == ["INFO", "ERROR"]
    assert all(entry["time"] and entry["request_id"] == "-" for entry in entries)
    assert "ZeroDivisionError" in entries[1]["exc"]


def test_text_lines_carry_time_and_level_and_the_level_setting_works() -> None:
    script = """
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        logging.getLogger("uvicorn.access").info("access line")
        """
    quiet = _log_lines({"log_level": "WARNING"}, script)
    assert len(quiet) == 1 and "warning line" in quiet[0]
    assert quiet[0].split()[1] == "WARNING"
    assert quiet[0][:4].isdigit()  # an ISO timestamp first
    chatty = _log_lines({"log_level": "debug"}, script)
    assert [line.split()[1] for line in chatty] == ["DEBUG", "INFO", "WARNING", "INFO"]


def test_secrets_are_redacted_from_messages_and_tracebacks() -> None:
    lines = _log_lines(
        {"api_keys": (API_KEY,)},
        f"""
        log.info("connecting to %s", {DSN!r})
        log.info("headers: X-API-Key: %s Authorization: Bearer tok-9911", {API_KEY!r})
        try:
            raise RuntimeError({DSN!r})
        except RuntimeError:
            log.exception("store failed")
        """,
    )
    text = "\n".join(lines)
    assert "store failed" in text and "db.internal" in text
    for secret in (API_KEY, DSN_PASSWORD, "tok-9911"):
        assert secret not in text


def test_served_requests_log_their_id_and_no_secret(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(tmp_path / "home")
    env = {
        "CATALENS_HOME": str(settings.home),
        "CATALENS_MODEL": settings.model,
        "CATALENS_LOG_FORMAT": "json",
        "CATALENS_API_KEYS": json.dumps([API_KEY]),
    }
    log = tmp_path / "serve.log"
    with catalens_serve(env, log=log) as served:
        given = httpx.get(
            f"{served.url}/v1/collections",
            params={"dsn": DSN, "key": API_KEY},
            headers={"X-Request-ID": "trace-abc.123", "X-API-Key": API_KEY},
        )
        assert given.headers["X-Request-ID"] == "trace-abc.123"
        made = httpx.get(f"{served.url}/health", headers={"X-Request-ID": "bad id\twith tab"})
        generated = made.headers["X-Request-ID"]
        assert generated and generated != "bad id\twith tab"
    text = log.read_text()
    for secret in (API_KEY, DSN_PASSWORD):
        assert secret not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert entries and all({"time", "level", "message", "request_id"} <= set(e) for e in entries)
    access = {e["request_id"]: e["message"] for e in entries if e["logger"] == "uvicorn.access"}
    assert "/v1/collections" in access["trace-abc.123"]
    assert "/health" in access[generated]


def test_redact_covers_dsn_forms_and_credential_headers() -> None:
    from catalens.api.logs import redact

    cases = {
        "postgresql://u:s3cret@h/db": "postgresql://u:***@h/db",
        "postgresql+psycopg://u:p%40ss@h:5/db": "postgresql+psycopg://u:***@h:5/db",
        "q=postgresql%3A%2F%2Fu%3As3cret%40h%2Fdb&x=1": "q=postgresql%3A%2F%2Fu%3A***%40h%2Fdb&x=1",
        "Authorization: Bearer s3cret": "Authorization: ***",
        "x-api-key=s3cret next": "x-api-key=*** next",
        "key k%2By and k+y": "key *** and ***",
        "http://host/path?x=1": "http://host/path?x=1",
    }
    for text, expected in cases.items():
        assert redact(text, ("k+y",)) == expected, text
