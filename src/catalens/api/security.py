"""Optional API keys (``X-API-Key``).

With ``CATALENS_API_KEYS`` set, write and admin routes need one of the keys; search, embed
and the read routes need one too when ``CATALENS_SEARCH_REQUIRES_KEY`` is on. Keys are
compared in constant time, and every configured key is compared, so the timing says nothing
about which (or whether a) key came close.
"""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from catalens.api.errors import ApiError
from catalens.settings import Settings

__all__ = ["check_key", "require_read_key", "require_write_key"]

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="Needed when CATALENS_API_KEYS is set."
)


def check_key(settings: Settings, key: str | None) -> None:
    """Raise 401 (no key) or 403 (wrong key) when keys are configured."""
    if not settings.api_keys:
        return
    if not key:
        raise ApiError(401, "unauthorized", "this route needs an API key in the X-API-Key header")
    given = key.encode("utf-8")
    matched = False
    for candidate in settings.api_keys:
        matched |= hmac.compare_digest(candidate.encode("utf-8"), given)
    if not matched:
        raise ApiError(403, "forbidden", "the X-API-Key header does not hold a valid key")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def require_write_key(request: Request, key: str | None = Security(api_key_header)) -> None:
    """Dependency of write and admin routes."""
    check_key(_settings(request), key)


def require_read_key(request: Request, key: str | None = Security(api_key_header)) -> None:
    """Dependency of search, embed and read routes: keyed only with search_requires_key."""
    settings = _settings(request)
    if settings.search_requires_key:
        check_key(settings, key)
