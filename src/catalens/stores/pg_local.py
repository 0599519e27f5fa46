"""``postgres-local``: an embedded PostgreSQL 16 + pgvector from the ``pgserver`` wheel.

For users without a server: the data directory lives under ``$CATALENS_HOME/postgres``, the
server listens on a Unix socket only, starts on first use (a couple of seconds) and stops
when the last process using it exits. Processes sharing a home share the server.
"""

from __future__ import annotations

import threading
import warnings
from contextlib import suppress
from pathlib import Path
from typing import Any

from catalens.errors import MissingExtraError, StoreError, missing_extra

DATABASE = "catalens"

_lock = threading.Lock()
_servers: dict[Path, Any] = {}
_dsns: dict[tuple[Path, str], str] = {}


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pgserver
        except ImportError as exc:
            raise missing_extra("pg", "postgres-local", exc.name) from exc
    return pgserver


def local_server(directory: Path) -> Any:
    """The running ``pgserver.PostgresServer`` for ``directory`` (started if need be)."""
    local_dsn(directory)
    return _servers[directory.expanduser().resolve()]


def local_dsn(directory: Path, *, database: str = DATABASE) -> str:
    """Start (or reuse) the embedded server in ``directory``; the DSN of ``database`` in it,
    created with the ``vector`` extension enabled."""
    try:
        import psycopg
        from psycopg import sql
    except ImportError as exc:
        raise missing_extra("pg", "postgres-local", exc.name) from exc

    path = directory.expanduser().resolve()
    with _lock:
        cached = _dsns.get((path, database))
        if cached is not None:
            return cached
        try:
            server = _servers.get(path)
            if server is None:
                path.parent.mkdir(parents=True, exist_ok=True)
                server = _pgserver().get_server(path, cleanup_mode="stop")
                _servers[path] = server
            dsn = str(server.get_uri(database))
            with psycopg.connect(str(server.get_uri()), autocommit=True) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
                ).fetchone()
                if exists is None:
                    # Another process may get there first.
                    with suppress(psycopg.errors.DuplicateDatabase):
                        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except (StoreError, MissingExtraError):
            raise
        except Exception as exc:  # OSError, psycopg errors, pg_ctl/initdb subprocess errors
            raise StoreError(f"cannot start the embedded PostgreSQL in {path}: {exc}") from exc
        _dsns[(path, database)] = dsn
        return dsn


def stop_local(directory: Path) -> None:
    """Stop the embedded server of ``directory`` if this process started it (tests, tools)."""
    path = directory.expanduser().resolve()
    with _lock:
        server = _servers.pop(path, None)
        for key in [key for key in _dsns if key[0] == path]:
            del _dsns[key]
    if server is not None:
        server.cleanup()
