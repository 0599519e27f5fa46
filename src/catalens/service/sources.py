"""The catalog side of an ingest: opening a collection's source, and what a sync records.

A source named over the HTTP API (``SourceConfig.untrusted``) is checked each time it is
opened (``check_source``): a local catalog only under ``api_local_image_dirs``, a REST URL
past the address guard, whose pages are then read through a guarded client.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from catalens.catalog import ColumnMapping, RestSource, open_catalog
from catalens.catalog.base import CatalogSource
from catalens.collection.collection import SourceConfig
from catalens.errors import BlockedURLError, ConfigError, FetchError
from catalens.ingest.pipeline import IngestReport
from catalens.refs import is_url
from catalens.service.upsert_refs import address_guard, check_local_path, local_path
from catalens.settings import Settings

__all__ = ["check_source", "is_rest", "open_source", "sync_summary"]


def open_source(
    source: SourceConfig, settings: Settings, *, rest_client: httpx.Client | None = None
) -> CatalogSource:
    """The catalog a collection's ``SourceConfig`` names (a file, a folder, a REST API).

    An untrusted source is checked first (``check_source``) and its REST pages are read
    through ``rest_client``, which must be a guarded one (``guarded_http.guarded_client``).
    """
    mapping = ColumnMapping(**source.mapping) if source.mapping else None
    if source.untrusted:
        check_source(source, settings)
        if is_rest(source):
            if rest_client is None:
                raise ValueError("an untrusted REST source is read through a guarded client")
            return RestSource(
                source.location,
                mapping=mapping,
                options=source.options,
                where=source.where,
                client=rest_client,
            )
    return open_catalog(
        source.location,
        format=source.format,  # type: ignore[arg-type]
        mapping=mapping,
        where=source.where,
        options=source.options,
    )


def check_source(source: SourceConfig, settings: Settings) -> None:
    """Refuse what a source named over the HTTP API may not make the server read: a REST
    URL the address guard refuses (``BlockedURLError``), a REST token read from the
    server's environment (``ConfigError``), or a local catalog outside
    ``api_local_image_dirs`` (``BlockedPathError``)."""
    if is_rest(source):
        try:
            address_guard(settings).check_url(source.location)
        except BlockedURLError:
            raise
        except FetchError:
            pass  # unreachable now is not forbidden: the sync reports why it cannot read it
        if source.options.get("auth_token_env"):
            raise ConfigError(
                "a source named over the HTTP API cannot take auth_token_env: the server's "
                "environment is the operator's. Create the collection with the CLI (catalens "
                "ingest), or send the token in the source's headers option"
            )
        return
    path = local_path(source.location)
    if path is None:
        raise ConfigError(
            f"source {source.location!r} is neither an http(s) URL nor a local catalog"
        )
    check_local_path(
        path,
        settings.api_local_image_dirs,
        what=f"catalog {source.location!r}",
        hint="name an http(s) REST URL, or ingest the file with the CLI (catalens ingest)",
    )


def is_rest(source: SourceConfig) -> bool:
    if source.format is not None:
        return source.format == "rest"
    return is_url(source.location)


def sync_summary(report: IngestReport) -> dict[str, Any]:
    """What a collection keeps of its last sync (``info()["last_sync"]``)."""
    return {
        "finished_at": time.time(),
        "seconds": round(report.seconds, 3),
        "products": report.products_seen,
        "added": report.products_added,
        "removed": report.products_removed,
        "images_embedded": report.images_embedded,
        "images_failed": report.images_failed,
        "rejected_rows": len(report.source.rejected) if report.source else 0,
    }
