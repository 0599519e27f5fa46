"""``store_factory``: a collection's vector store, opened as its ``store`` string says; and the
PostgreSQL database that holds collections' state when ``settings.store`` names one
(``state_database``), with the query log that goes with it (``query_log``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from catalens.collection.config import CollectionConfig
from catalens.errors import ConfigError
from catalens.ledger.query_log import QueryLog, SqliteQueryLog
from catalens.settings import Settings
from catalens.stores.base import VectorStore
from catalens.stores.faiss_store import FaissOptions, FaissStore

if TYPE_CHECKING:
    from catalens.ledger.pg_registry import PgDatabase

__all__ = [
    "PG_SCHEMES",
    "is_postgres",
    "postgres_dsn",
    "query_log",
    "state_database",
    "store_factory",
]

PG_SCHEMES = ("postgresql://", "postgres://")
LOCAL_PG = "postgres-local"


def is_postgres(spec: str) -> bool:
    """Whether a ``store`` string names a PostgreSQL database."""
    spec = spec.strip()
    return spec == LOCAL_PG or spec.startswith(PG_SCHEMES)


def postgres_dsn(settings: Settings, spec: str | None = None) -> str:
    """The DSN of the database a ``store`` string (default: ``settings.store``) names;
    ``postgres-local`` starts the embedded server under ``settings.home / "postgres"``."""
    spec = (settings.store if spec is None else spec).strip()
    if spec == LOCAL_PG:
        from catalens.stores.pg_local import local_dsn

        return local_dsn(settings.home / "postgres")
    if not spec.startswith(PG_SCHEMES):
        raise ConfigError(f"store {spec!r} is not a postgresql:// DSN or {LOCAL_PG}")
    return spec


def state_database(settings: Settings) -> PgDatabase | None:
    """The database that holds collections' state when ``settings.store`` is a PostgreSQL
    one (every collection made with that store lives there, and every process naming it
    lists them); ``None`` for ``faiss``. It connects on first use. Its ``pool`` (psycopg
    connections) and ``dsn`` serve anything else a replica keeps in that database."""
    if not is_postgres(settings.store):
        return None
    try:
        from catalens.ledger.pg_registry import PgDatabase
    except ImportError as exc:
        raise ConfigError(
            f"store {settings.store.strip()!r} needs the pg extra: pip install 'catalens[pg]'"
            f" ({exc.name} is missing)"
        ) from exc
    return PgDatabase(lambda: postgres_dsn(settings))


def query_log(settings: Settings, database: PgDatabase | None) -> QueryLog:
    """Where photo queries are kept for feedback: in ``database`` when there is one (a
    query one replica answered takes feedback through any other), else in
    ``<home>/queries.sqlite``."""
    if database is not None:
        from catalens.ledger.pg_query_log import PgQueryLog

        return PgQueryLog(
            database,
            retention_seconds=settings.query_retention_seconds,
            retention_max=settings.query_retention_max,
        )
    return SqliteQueryLog(
        settings.home / "queries.sqlite",
        retention_seconds=settings.query_retention_seconds,
        retention_max=settings.query_retention_max,
    )


def store_factory(settings: Settings) -> Callable[[CollectionConfig, Path], VectorStore]:
    """Opens a collection's store as ``config.store`` says: ``faiss`` (files in the
    collection's folder), a ``postgresql://`` DSN, or ``postgres-local`` (an embedded
    PostgreSQL under ``settings.home / "postgres"``). pgvector is imported only when used."""

    def open_store(config: CollectionConfig, directory: Path) -> VectorStore:
        spec = config.store.strip()
        if spec == "faiss":
            options = FaissOptions(
                index_type=config.index,  # type: ignore[arg-type]
                metric=config.metric,  # type: ignore[arg-type]
                hnsw_m=settings.hnsw_m,
                hnsw_ef_construction=settings.hnsw_ef_construction,
                hnsw_ef_search=settings.hnsw_ef_search,
                ivf_nlist=settings.ivf_nlist,
                ivf_nprobe=settings.ivf_nprobe,
            )
            return FaissStore.open(directory / "faiss", dim=config.model.dim, options=options)
        if is_postgres(spec):
            dsn = postgres_dsn(settings, spec)
        else:
            raise ConfigError(
                f"unknown store {config.store!r} for collection {config.name!r}: use faiss,"
                " a postgresql:// DSN, or postgres-local"
            )
        try:
            from catalens.stores.pgvector_store import PgVectorStore
        except ImportError as exc:  # the message carries the install hint
            raise ConfigError(str(exc)) from exc
        return PgVectorStore(
            dsn,
            config.name,
            config.model.dim,
            index=config.index,  # type: ignore[arg-type]
            metric=config.metric,  # type: ignore[arg-type]
            m=settings.hnsw_m,
            ef_construction=settings.hnsw_ef_construction,
            ef_search=settings.hnsw_ef_search,
            model=config.model,
            key=repr(config.created_at),
        )

    return open_store
