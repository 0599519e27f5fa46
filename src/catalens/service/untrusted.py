"""The two doors of what the HTTP API names: one guarded image fetcher and one guarded REST
client, made on first use and shared by every upsert and every source named over HTTP."""

from __future__ import annotations

import threading

import httpx

from catalens.ingest.fetch import ImageFetcher
from catalens.service.guarded_http import guarded_client
from catalens.service.upsert_refs import address_guard, guarded_fetcher
from catalens.settings import Settings

__all__ = ["UntrustedReads"]


class UntrustedReads:
    """``fetcher()`` reads images (local files only under ``api_local_image_dirs``, URLs
    behind the address guard); ``rest_client()`` reads REST catalog pages behind the guard.
    Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._fetcher: ImageFetcher | None = None
        self._client: httpx.Client | None = None

    def fetcher(self) -> ImageFetcher:
        with self._lock:
            if self._fetcher is None:
                self._fetcher = guarded_fetcher(self._settings)
            return self._fetcher

    def rest_client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = guarded_client(address_guard(self._settings))
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._fetcher is not None:
                self._fetcher.close()
            if self._client is not None:
                self._client.close()
            self._fetcher = self._client = None
