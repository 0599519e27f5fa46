"""Opening a pgvector collection: its index options, and the first connection that migrates
the schema and checks what ``meta`` recorded (dim, index, model) against what was asked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from catalens.errors import ConfigError, ModelMismatchError, StoreError
from catalens.settings import Metric
from catalens.stores.pg_schema import (
    IMAGES,
    Conn,
    Names,
    create_hnsw_index,
    ensure_vector_extension,
    migrate,
    read_meta,
    safe_dsn,
    write_meta,
)
from catalens.stores.pg_search import OPS
from catalens.types import ModelIdentity

PgIndex = Literal["flat", "hnsw"]
MAX_HNSW_DIM = 2000


@dataclass(frozen=True)
class IndexSpec:
    """How a collection's vectors are indexed: ``hnsw`` (``m``, ``ef_construction``) or
    ``flat`` (none: every search is an exact scan). ``build_memory`` sets
    ``maintenance_work_mem`` for index builds and is not recorded."""

    index: PgIndex
    metric: Metric
    m: int
    ef_construction: int
    build_memory: str | None = None

    @property
    def hnsw(self) -> bool:
        return self.index == "hnsw"

    def to_dict(self) -> dict[str, Any]:
        """What ``meta`` records, and what a later open must match."""
        spec: dict[str, Any] = {"type": self.index, "metric": self.metric}
        if self.hnsw:
            spec.update(m=self.m, ef_construction=self.ef_construction)
        return spec

    def check(self, dim: int) -> None:
        if dim < 1:
            raise ConfigError(f"vector dim must be positive, got {dim}")
        if self.index not in ("flat", "hnsw"):
            raise ConfigError(f"the pgvector store has index 'flat' or 'hnsw', not {self.index!r}")
        if self.metric not in OPS:
            raise ConfigError(f"unknown metric {self.metric!r}: use cosine or l2")
        if self.hnsw and dim > MAX_HNSW_DIM:
            raise ConfigError(f"pgvector's HNSW index takes at most {MAX_HNSW_DIM} dims")

    def create(self, conn: Conn, names: Names, table: str) -> None:
        """Build the HNSW index on ``table``."""
        create_hnsw_index(
            conn,
            names,
            table,
            opclass=OPS[self.metric][1],
            m=self.m,
            ef_construction=self.ef_construction,
            build_memory=self.build_memory,
        )


def open_schema(
    dsn: str,
    names: Names,
    *,
    collection: str,
    dim: int,
    spec: IndexSpec,
    model: ModelIdentity | None,
    timeout: float,
) -> None:
    """Migrate the collection's schema and record (first open) or check (later) its meta."""
    where = safe_dsn(dsn)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as exc:
        raise StoreError(f"{where}: cannot connect: {exc}") from exc
    try:
        with conn:
            ensure_vector_extension(conn)
            migrate(conn, names, dim)
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (names.lock_key("migrate"),))
                _check_meta(conn, names, collection, dim, spec, model)
    except psycopg.Error as exc:
        raise StoreError(f"{where}: cannot open collection {collection!r}: {exc}") from exc


def _check_meta(
    conn: Conn,
    names: Names,
    collection: str,
    dim: int,
    spec: IndexSpec,
    model: ModelIdentity | None,
) -> None:
    meta = read_meta(conn, names)
    where = f"collection {collection!r} (schema {names.schema})"
    if "dim" not in meta:
        values: dict[str, Any] = {
            "dim": dim,
            "index": spec.to_dict(),
            "generation": None,
            "count": 0,
        }
        if model is not None:
            values["model"] = model.to_dict()
        write_meta(conn, names, values)
        if spec.hnsw:
            spec.create(conn, names, IMAGES)
        return
    if meta["dim"] != dim:
        raise StoreError(f"{where} holds {meta['dim']}-d vectors, opened with dim={dim}")
    saved = meta.get("index") or {}
    if saved != spec.to_dict():
        raise StoreError(
            f"{where} was built with index {saved}, opened with {spec.to_dict()};"
            " rebuild the collection to change them"
        )
    if model is None:
        return
    stored = meta.get("model")
    if stored is None:
        write_meta(conn, names, {"model": model.to_dict()})
        return
    theirs = ModelIdentity.from_dict(stored)
    if theirs.key() != model.key():
        raise ModelMismatchError(
            f"{where} holds vectors of {theirs.name} (revision {theirs.revision}, dim "
            f"{theirs.dim}); opened for {model.name} (revision {model.revision}, dim "
            f"{model.dim}). Use the collection's own model or another collection."
        )
