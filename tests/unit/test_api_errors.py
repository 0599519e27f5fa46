"""The API picks a status from an error's type, never from its wording."""

from __future__ import annotations

import pytest

from catalens.api.errors import classify
from catalens.errors import (
    AlreadyExistsError,
    BlockedPathError,
    BlockedURLError,
    CatalensError,
    ConfigError,
    MissingExtraError,
    ModelError,
    NoTextTowerError,
)


@pytest.mark.parametrize(
    "error,expected",
    [
        (AlreadyExistsError("reworded: that name is taken"), (409, "conflict")),
        (ConfigError("collection 'x' already exists"), (422, "invalid_request")),
        (NoTextTowerError("reworded: words are not searchable here"), (422, "no_text_tower")),
        (ModelError("onnxruntime failed to run the text tower"), (503, "model_unavailable")),
        (BlockedURLError("http://10.0.0.1/", "private"), (400, "blocked_url")),
        (BlockedPathError("/etc/passwd is outside the allowed folders"), (400, "blocked_path")),
        (MissingExtraError("needs catalens[pg]", "pg"), (503, "extra_not_installed")),
        (CatalensError("something else"), (500, "internal_error")),
    ],
)
def test_the_status_follows_the_type(error: CatalensError, expected: tuple[int, str]) -> None:
    assert classify(error) == expected


def test_the_new_leaves_keep_their_bases() -> None:
    """``except ConfigError`` / ``except ModelError`` callers still catch them."""
    assert issubclass(AlreadyExistsError, ConfigError)
    assert issubclass(NoTextTowerError, ModelError)
