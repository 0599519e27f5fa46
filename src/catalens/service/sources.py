"""The catalog side of an ingest: opening a collection's source, and what a sync records.

A source named over the HTTP API (``SourceConfig.untrusted``) is checked each time it is
opened (``check_source``): a local catalog only under ``api_local_image_dirs``, a REST URL
past the address guard, whose pages are then read through a guarded client. Secrets are the
operator's: a source names a declared credential (``options.credential``, see
``Settings.source_credentials``), resolved into a header only when the source is opened,
and sent only to the URLs the credential's ``urls`` cover (without ``urls``, a credential
only the CLI and library may name: the source's own origin), on every page and redirect.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import httpx

from catalens.catalog import ColumnMapping, RestSource, open_catalog
from catalens.catalog.base import CatalogSource
from catalens.catalog.rest import ScopedHeaders
from catalens.collection.config import SourceConfig
from catalens.errors import BlockedURLError, CatalogError, ConfigError, FetchError
from catalens.ingest.pipeline import IngestReport
from catalens.refs import is_url
from catalens.service.upsert_refs import address_guard, check_local_path, local_path
from catalens.settings import Settings, SourceCredential

__all__ = [
    "check_source",
    "is_rest",
    "migrated",
    "open_source",
    "sync_summary",
    "with_stored_options",
]

CREDENTIAL = "credential"
"""The source option that names an operator-declared credential."""


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
    options = dict(source.options)
    name = options.pop(CREDENTIAL, None)
    credential = None if name is None else _credential_headers(source, settings, name)
    if is_rest(source):
        if source.untrusted and rest_client is None:
            raise ValueError("an untrusted REST source is read through a guarded client")
        return RestSource(
            source.location,
            mapping=mapping,
            options=options,
            where=source.where,
            client=rest_client if source.untrusted else None,
            credential=credential,
        )
    if source.relative and not os.path.exists(source.location):
        raise CatalogError(
            f"catalog {source.location!r} is a relative path (stored before sources were "
            f"kept absolute) and is not under the current folder {os.getcwd()}: give the "
            "source again as an absolute path (catalens ingest -c COLLECTION --source "
            "/abs/path/to/catalog)"
        )
    return open_catalog(
        source.location,
        format=source.format,  # type: ignore[arg-type]
        mapping=mapping,
        where=source.where,
        options=options,
    )


def _credential_headers(source: SourceConfig, settings: Settings, name: object) -> ScopedHeaders:
    """A named credential's header, for the URLs it may go to: its ``urls``, or without
    them the source's own origin. Set after the ``headers`` option, so none can replace it;
    never stored (the config keeps the name)."""
    credential = _credential(source, settings, name)
    value = credential.header_value()
    if value is None:
        where = f"the environment variable {credential.env}" if credential.env else "no value"
        raise ConfigError(f"source credential {name!r} has no token: {where} is empty")
    headers = {credential.header: value}
    if not credential.urls:
        return ScopedHeaders.for_origin(headers, source.location)
    if not credential.allows(source.location):
        raise ConfigError(
            f"source credential {name!r} may not be sent to {source.location}: the "
            "operator lists the URLs it may go to (its urls)"
        )
    return ScopedHeaders(headers, credential.urls)


def _credential(source: SourceConfig, settings: Settings, name: object) -> SourceCredential:
    if not is_rest(source):
        raise ConfigError("only a REST source can send a credential")
    credential = settings.source_credentials.get(name) if isinstance(name, str) else None
    if credential is None:
        raise ConfigError(
            f"no source credential {name!r} is declared: the operator declares them in "
            "CATALENS_SOURCE_CREDENTIALS"
        )
    return credential


def check_source(source: SourceConfig, settings: Settings) -> None:
    """Refuse what a source named over the HTTP API may not make the server read or send:
    a REST URL the address guard refuses (``BlockedURLError``), a token read from the
    server's environment, a credential the operator did not declare for this URL
    (``ConfigError``), or a local catalog outside ``api_local_image_dirs``
    (``BlockedPathError``)."""
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
                "environment is the operator's. Name a credential the operator declared "
                '(options: {"credential": NAME}, see CATALENS_SOURCE_CREDENTIALS)'
            )
        name = source.options.get(CREDENTIAL)
        if name is not None and not _credential(source, settings, name).allows(source.location):
            raise ConfigError(
                f"source credential {name!r} may not be sent to {source.location}: the "
                "operator lists the URLs it may go to (its urls)"
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


def migrated(stored: SourceConfig) -> SourceConfig:
    """A stored source as a sync reads it: a relative location (stored before sources were
    kept absolute; where it was given from is not recorded) resolved against the current
    folder when the catalog is there, else as it is (``open_source`` then says how to fix
    it). The run that reads it stores the resolved one."""
    if not stored.relative or is_rest(stored):
        return stored
    absolute = stored.resolved()
    return absolute if os.path.exists(absolute.location) else stored


def with_stored_options(source: SourceConfig, stored: SourceConfig | None) -> SourceConfig:
    """A source given again for an existing collection, with what it leaves out taken from
    the collection's stored source: its column ``mapping`` and ``where`` filter, and (the
    same location) its ``format`` and ``options``. Re-running an ingest without the column
    options it was created with must not read the catalog with other columns."""
    if stored is None:
        return source
    same_place = source.location == stored.location
    return replace(
        source,
        mapping=source.mapping if source.mapping is not None else stored.mapping,
        where=source.where if source.where is not None else stored.where,
        format=source.format if source.format is not None or not same_place else stored.format,
        options=source.options if source.options or not same_place else stored.options,
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
