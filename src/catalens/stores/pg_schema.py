"""The PostgreSQL side of a pgvector collection: names, versioned migrations, the extension
check, and the table swap behind bulk loads.

Each collection lives in its own schema, ``catalens_<name>_<hash>`` (see ``Names``)::

    schema_version (version, applied_at)        one row per applied migration
    meta (key text PK, value jsonb)             dim, index, model identity, generation, count
    images (image_id bigint PK, product_id text, embedding vector(dim), metadata jsonb)
    products (id text PK, title text, metadata jsonb)

``MIGRATIONS`` is an ordered list of functions; ``migrate`` applies the missing ones in one
transaction under an advisory lock, so replicas opening the same collection at once are safe.
A migration, once released, never changes: new shapes are new migrations.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from catalens.errors import StoreError

Conn = psycopg.Connection[Any]

IMAGES = "images"
NEXT_IMAGES = "images_next"
"""A replacement table filled by a bulk load and swapped in by ``flush``."""


@dataclass
class Write:
    """A store's open write transaction and the table it writes."""

    conn: Conn
    target: str = IMAGES
    changed: bool = False
    products_changed: bool = False


def dumps_json(value: Any) -> str:
    """A product's metadata as JSON (values JSON has no type for as their text)."""
    return json.dumps(value, default=str)


VECTOR_HELP = (
    "install pgvector on the server (e.g. `apt install postgresql-{major}-pgvector`, or run "
    "the pgvector/pgvector:pg{major} image; https://github.com/pgvector/pgvector#installation)"
    " and then, as a superuser, run `CREATE EXTENSION vector;` in database {db!r}"
)


@dataclass(frozen=True)
class Names:
    """The schema of one collection and the keys of its advisory locks."""

    schema: str

    @classmethod
    def for_collection(cls, collection: str, key: str = "") -> Names:
        """A valid, lower-case identifier from the name; the hash of name and ``key`` keeps
        ``a.b`` and ``a_b`` apart, and a collection re-created under the same name (another
        ``key``) from finding the old one's rows."""
        slug = re.sub(r"[^a-z0-9_]+", "_", collection.lower()).strip("_")[:40] or "c"
        digest = hashlib.sha1(f"{collection}\0{key}".encode()).hexdigest()[:8]
        return cls(f"catalens_{slug}_{digest}")

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def lock_key(self, purpose: str) -> int:
        """A bigint key for ``pg_advisory_xact_lock``: ``migrate`` or ``write``."""
        digest = hashlib.sha1(f"catalens:{purpose}:{self.schema}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


def _v1_tables(conn: Conn, names: Names, dim: int) -> None:
    statements = [
        "CREATE TABLE {meta} (key text PRIMARY KEY, value jsonb NOT NULL)",
        "CREATE TABLE {images} (image_id bigint PRIMARY KEY, product_id text NOT NULL,"
        " embedding vector({dim}) NOT NULL, metadata jsonb)",
        # Auto-named (images_product_id_idx), so a swapped-in table renames it back by prefix.
        "CREATE INDEX ON {images} (product_id)",
        "CREATE TABLE {products} (id text PRIMARY KEY, title text NOT NULL DEFAULT '',"
        " metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb)",
    ]
    for statement in statements:
        conn.execute(
            sql.SQL(statement).format(
                meta=names.table("meta"),
                images=names.table(IMAGES),
                products=names.table("products"),
                dim=sql.Literal(dim),
            )
        )


def _v2_product_metadata_index(conn: Conn, names: Names, dim: int) -> None:
    # Containment filters (metadata @> '{"k": v}') can use it on large catalogs.
    conn.execute(
        sql.SQL("CREATE INDEX ON {} USING gin (metadata jsonb_path_ops)").format(
            names.table("products")
        )
    )


INLINE_MAX_DIM = 1536
"""Up to this dim a vector row stays well under a page, so it can be stored inline."""


def _v3_inline_vectors(conn: Conn, names: Names, dim: int) -> None:
    # A vector over ~2 kB (dim > 500) is TOASTed by default: exact scans then fetch every
    # row from the TOAST table, several times slower. Rows written from now on stay inline.
    stored = read_meta_value(conn, names, "dim")  # the table's, if it was written already
    if (dim if stored is None else int(stored)) <= INLINE_MAX_DIM:
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN embedding SET STORAGE PLAIN").format(
                names.table(IMAGES)
            )
        )


Migration = Callable[[Conn, Names, int], None]
MIGRATIONS: tuple[Migration, ...] = (
    _v1_tables,
    _v2_product_metadata_index,
    _v3_inline_vectors,
)


def migrate(conn: Conn, names: Names, dim: int) -> int:
    """Bring the collection's schema to the latest version; returns that version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (names.lock_key("migrate"),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(names.schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(names.table("schema_version"))
        )
        row = conn.execute(
            sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(
                names.table("schema_version")
            )
        ).fetchone()
        current = int(row[0]) if row else 0
        if current > len(MIGRATIONS):
            raise StoreError(
                f"schema {names.schema} is at version {current}, newer than this catalens "
                f"knows ({len(MIGRATIONS)}): upgrade catalens"
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            MIGRATIONS[version - 1](conn, names, dim)
            conn.execute(
                sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(
                    names.table("schema_version")
                ),
                (version,),
            )
    return len(MIGRATIONS)


def read_meta(conn: Conn, names: Names) -> dict[str, Any]:
    rows = conn.execute(sql.SQL("SELECT key, value FROM {}").format(names.table("meta")))
    return {str(key): value for key, value in rows.fetchall()}


def read_meta_value(conn: Conn, names: Names, key: str) -> Any:
    row = conn.execute(
        sql.SQL("SELECT value FROM {} WHERE key = %s").format(names.table("meta")), (key,)
    ).fetchone()
    return None if row is None else row[0]


def write_meta(conn: Conn, names: Names, values: Mapping[str, Any]) -> None:
    conn.cursor().executemany(
        sql.SQL(
            "INSERT INTO {} (key, value) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ).format(names.table("meta")),
        [(key, Jsonb(value)) for key, value in values.items()],
    )


def ensure_vector_extension(conn: Conn, *, create: bool = True) -> str:
    """The installed pgvector version; creates the extension when it may (``create``).

    Raises StoreError with the commands to run when the extension is not available on the
    server, or not enabled in this database and cannot be enabled by this user.
    """
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    if row is not None:
        return str(row[0])
    info = conn.info
    major = int(info.server_version) // 10000
    hint = VECTOR_HELP.format(major=major, db=info.dbname)
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
    ).fetchone()
    if available is None:
        raise StoreError(f"the pgvector extension is not installed on this server: {hint}")
    if not create:
        raise StoreError(
            f"the pgvector extension is not enabled in database {info.dbname!r}: "
            "run `CREATE EXTENSION vector;` in it"
        )
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreError(
            f"the pgvector extension is not enabled in database {info.dbname!r} and user "
            f"{info.user!r} may not enable it: as a superuser, run `CREATE EXTENSION vector;` "
            f"in that database ({exc.diag.message_primary})"
        ) from exc
    return ensure_vector_extension(conn, create=False)


def create_hnsw_index(
    conn: Conn,
    names: Names,
    table: str,
    *,
    opclass: str,
    m: int,
    ef_construction: int,
    build_memory: str | None = None,
) -> None:
    """Build the HNSW index on ``table`` (auto-named ``<table>_embedding_idx``)."""
    if build_memory:
        conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (build_memory,))
    conn.execute(
        sql.SQL(
            "CREATE INDEX ON {} USING hnsw (embedding {}) WITH (m = {}, ef_construction = {})"
        ).format(names.table(table), sql.SQL(opclass), sql.Literal(m), sql.Literal(ef_construction))
    )


def begin_swap(conn: Conn, names: Names) -> str:
    """Create ``images_next``, shaped like ``images`` but without its HNSW index, for a bulk
    load; returns its name. ``finish_swap`` puts it in place of ``images``."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(names.table(NEXT_IMAGES)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            names.table(NEXT_IMAGES), names.table(IMAGES)
        )
    )
    # LIKE copied the HNSW index too: drop it, it is built once after the load.
    for index in _indexes(conn, names, NEXT_IMAGES, method="hnsw"):
        conn.execute(sql.SQL("DROP INDEX {}").format(names.table(index)))
    return NEXT_IMAGES


def finish_swap(conn: Conn, names: Names) -> None:
    """Replace ``images`` by ``images_next`` (indexes renamed back by prefix), in the
    caller's transaction: readers elsewhere see the old table until it commits."""
    conn.execute(sql.SQL("DROP TABLE {}").format(names.table(IMAGES)))
    conn.execute(
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            names.table(NEXT_IMAGES), sql.Identifier(IMAGES)
        )
    )
    prefix = NEXT_IMAGES + "_"
    for index in _indexes(conn, names, IMAGES):
        if index.startswith(prefix):
            conn.execute(
                sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                    names.table(index), sql.Identifier(IMAGES + "_" + index[len(prefix) :])
                )
            )
    conn.execute(sql.SQL("ANALYZE {}").format(names.table(IMAGES)))


def _indexes(conn: Conn, names: Names, table: str, *, method: str | None = None) -> list[str]:
    """Names of the indexes on ``table`` (only those of access ``method`` if given)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_am a ON a.oid = c.relam"
        " WHERE i.indrelid = %s::regclass AND (%s::text IS NULL OR a.amname = %s)",
        (f'"{names.schema}"."{table}"', method, method),
    ).fetchall()
    return [str(r[0]) for r in rows]


def safe_dsn(dsn: str) -> str:
    """The DSN for messages: user@host:port/dbname, never the password."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable DSN>"
    host = params.get("host") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    user = f"{params['user']}@" if params.get("user") else ""
    return f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"
