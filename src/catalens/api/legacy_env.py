"""The seeds' environment variables, read when the ``CATALENS_*`` ones are not set.

Seed 000 (the Flask medicine search) was configured with ``DEVICE``, ``SIMILARITY_THRESHOLD``,
``BATCH_SIZE``, ``MAX_RESULTS``, ``CACHE_REFRESH_SECONDS`` and ``NESTJS_SERVER``. A deployment
that still sets them keeps working: each maps onto the catalens setting below, unless that
setting is given as ``CATALENS_<FIELD>`` or in the TOML config file, which always win.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

from catalens.settings import Settings, config_file, read_toml

__all__ = ["LEGACY_ENV", "legacy_overrides", "settings_from_env"]

LEGACY_ENV: dict[str, str] = {
    "DEVICE": "device",
    "SIMILARITY_THRESHOLD": "threshold",
    "BATCH_SIZE": "batch_size",
    "MAX_RESULTS": "top_k",
    "CACHE_REFRESH_SECONDS": "refresh_seconds",
    "NESTJS_SERVER": "rest_url",
}
"""Seed variable -> catalens setting."""


def legacy_overrides(
    environ: Mapping[str, str], *, configured: Collection[str] = ()
) -> dict[str, Any]:
    """Settings overrides from the seeds' variables in ``environ``.

    A setting is left alone when ``environ`` has ``CATALENS_<FIELD>`` (any case) or when its
    field name is in ``configured`` (e.g. the keys of the TOML file). Empty values are ignored.
    ``NESTJS_SERVER`` is the backend's base URL; its products are read from ``/medicines``.
    """
    catalens_keys = {key.upper() for key in environ if key.upper().startswith("CATALENS_")}
    overrides: dict[str, Any] = {}
    for variable, field in LEGACY_ENV.items():
        value = environ.get(variable, "").strip()
        if not value or f"CATALENS_{field.upper()}" in catalens_keys or field in configured:
            continue
        overrides[field] = value.rstrip("/") if field == "rest_url" else value
    return overrides


def settings_from_env(**overrides: Any) -> Settings:
    """Settings from ``CATALENS_*``, the TOML file, the seeds' variables, then ``overrides``.

    ``overrides`` whose value is ``None`` are dropped (unset command-line options).
    """
    path = config_file()
    configured = set(read_toml(path)) if path is not None and path.is_file() else set()
    merged = legacy_overrides(os.environ, configured=configured)
    merged.update({key: value for key, value in overrides.items() if value is not None})
    return Settings(**merged)
