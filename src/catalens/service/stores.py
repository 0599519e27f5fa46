"""``store_factory``: a collection's vector store, opened as its ``store`` string says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from catalens.collection.collection import CollectionConfig
from catalens.errors import ConfigError
from catalens.settings import Settings
from catalens.stores.base import VectorStore
from catalens.stores.faiss_store import FaissOptions, FaissStore

__all__ = ["PG_SCHEMES", "faiss_factory", "store_factory"]

PG_SCHEMES = ("postgresql://", "postgres://")


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
        if spec == "postgres-local":
            from catalens.stores.pg_local import local_dsn

            dsn = local_dsn(settings.home / "postgres")
        elif spec.startswith(PG_SCHEMES):
            dsn = spec
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


faiss_factory = store_factory
"""The former name, when FAISS was the only store."""
