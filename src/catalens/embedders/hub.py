"""Whether the Hugging Face hub answers, decided once per endpoint per process, in seconds.

Offline or behind a firewall, ``huggingface_hub`` retries for about a minute before it fails;
one short request here decides instead, and loads go to the local cache when it says no.
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from typing import Final

__all__ = ["PROBE_TIMEOUT_S", "forget", "hub_endpoint", "hub_offline", "hub_reachable", "in_cache"]

PROBE_TIMEOUT_S: Final = 2.0
DEFAULT_ENDPOINT: Final = "https://huggingface.co"
_TRUE: Final = {"1", "true", "yes", "on"}

_lock = threading.Lock()
_answers: dict[str, bool] = {}


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` when set, as ``huggingface_hub`` reads it."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) says not to use the network."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUE
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _probe(endpoint: str) -> bool:
    request = urllib.request.Request(endpoint + "/api/models?limit=1", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True  # it answered: the hub is there, whatever it thinks of the request
    except (OSError, ValueError):
        return False


def hub_reachable() -> bool:
    """False when offline is asked for or the endpoint does not answer within a couple of
    seconds; the answer for an endpoint is kept for the process."""
    if hub_offline():
        return False
    endpoint = hub_endpoint()
    with _lock:
        known = _answers.get(endpoint)
    if known is not None:
        return known
    answer = _probe(endpoint)
    with _lock:
        _answers[endpoint] = answer
    return answer


def in_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds ``repo_id``'s config (no network, no torch)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # without the hub client nothing can be cached
        return False
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the client refuses is not in the cache either
        return False
    return isinstance(found, str)


def forget() -> None:
    """Drop the kept answers (tests; a process that knows the network changed)."""
    with _lock:
        _answers.clear()
