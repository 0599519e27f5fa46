"""A collection's config: its name, model identity, index and search settings, and source.

Saved as a JSON-able mapping through the collection's state (``CollectionState.set_config``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from catalens.errors import ConfigError
from catalens.search.query_crops import SearchOptions
from catalens.types import ModelIdentity

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


def check_name(name: str) -> str:
    if not _NAME.match(name) or name == "all":
        raise ConfigError(
            f"invalid collection name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(and not 'all', which means every collection)"
        )
    return name


@dataclass(frozen=True)
class SourceConfig:
    """Where a collection's catalog comes from, so ``sync`` can read it again."""

    location: str
    format: str | None = None
    mapping: Mapping[str, Any] | None = None
    where: Mapping[str, str] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    untrusted: bool = False
    """Named over the HTTP API: every read of it (and of the images it names) follows the
    rules of an untrusted upsert (``service/upsert_refs.py``), on every later sync too."""

    def __post_init__(self) -> None:
        # One form however it was given (tuples from the CLI, lists from JSON), so the
        # config read back from the state equals the one saved: a mapping's lists of
        # columns are tuples (as ``ColumnMapping`` has them), the options are JSON's.
        if self.mapping is not None:
            mapping = {str(k): _tupled(v) for k, v in self.mapping.items()}
            object.__setattr__(self, "mapping", mapping)
        if self.where is not None:
            object.__setattr__(self, "where", dict(self.where))
        object.__setattr__(self, "options", _json_form(self.options))

    @property
    def relative(self) -> bool:
        """Whether the location is a local path relative to some folder (a URL, a
        ``file:`` ref and an absolute path are not)."""
        return not _SCHEME.match(self.location) and not os.path.isabs(self.location)

    def resolved(self) -> SourceConfig:
        """This source with a relative location made absolute against the process's
        current folder: a sync run later from another folder reads the same catalog."""
        if not self.relative:
            return self
        return replace(self, location=os.path.abspath(self.location))


def _tupled(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _json_form(value: Any) -> Any:
    """``value`` as JSON reads it back: mappings as dicts, sequences as lists."""
    if isinstance(value, Mapping):
        return {str(k): _json_form(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_form(v) for v in value]
    return value


@dataclass(frozen=True)
class CollectionConfig:
    name: str
    model_spec: str
    """What was passed to ``--model``: reloads the same embedder."""
    model: ModelIdentity
    store: str = "faiss"
    index: str = "flat"
    metric: str = "cosine"
    source: SourceConfig | None = None
    search: SearchOptions = field(default_factory=SearchOptions)
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["search"] = self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CollectionConfig:
        source = data.get("source")
        return cls(
            name=str(data["name"]),
            model_spec=str(data["model_spec"]),
            model=ModelIdentity.from_dict(data["model"]),
            store=str(data.get("store", "faiss")),
            index=str(data.get("index", "flat")),
            metric=str(data.get("metric", "cosine")),
            source=SourceConfig(**source) if source else None,
            search=SearchOptions.from_dict(data.get("search")),
            created_at=float(data.get("created_at", 0.0)),
        )
