"""What a reference string names: ``is_url`` tells an http(s) URL from a path.

At the bottom layer with ``types`` and ``errors``: every package may import it."""

from __future__ import annotations

__all__ = ["is_url"]


def is_url(ref: str) -> bool:
    """Whether ``ref`` is an http(s) URL; the scheme may be in any case (``HTTPS://``)."""
    return ref[:8].lower().startswith(("http://", "https://"))
