"""The query log: kept photos and their vectors, forgotten by age and by count."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalens.ledger.query_log import QueryVectors, model_key
from catalens.ledger.query_log import SqliteQueryLog as QueryLog
from catalens.types import ModelIdentity


def _vectors(seed: int) -> dict[str, QueryVectors]:
    rng = np.random.default_rng(seed)
    return {"m": QueryVectors(rng.random(4, dtype=np.float32), rng.random(4, dtype=np.float32))}


def test_a_kept_query_comes_back_with_its_vectors(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite")
    vectors = _vectors(0)
    query_id = log.keep(b"photo", vectors)
    assert query_id
    found = log.get(query_id)
    assert found is not None
    kept, by_model = found
    assert kept.image == b"photo"
    np.testing.assert_array_equal(by_model["m"].query, vectors["m"].query)
    np.testing.assert_array_equal(by_model["m"].plain, vectors["m"].plain)
    assert log.get("no-such-id") is None
    log.close()


def test_queries_are_forgotten_by_age_and_by_count(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite", retention_seconds=60, retention_max=2)
    first = log.keep(b"1", _vectors(1), now=1000.0)
    second = log.keep(b"2", _vectors(2), now=1001.0)
    assert first and second
    assert log.get(first, now=1059.0) is not None
    assert log.get(first, now=1061.0) is None  # too old, even before a prune
    third = log.keep(b"3", _vectors(3), now=1002.0)
    assert third
    assert len(log) == 2  # the oldest went
    assert log.get(first, now=1002.0) is None
    assert log.get(third, now=1002.0) is not None
    log.keep(b"4", _vectors(4), now=2000.0)
    assert len(log) == 1  # the rest expired
    log.close()


def test_a_log_that_keeps_nothing(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite", retention_max=0)
    assert not log.enabled
    assert log.keep(b"x", _vectors(0)) is None


def test_model_keys_follow_the_identity() -> None:
    a = ModelIdentity("m", "r1", 4, {"crop": 224})
    assert model_key(a) == model_key(ModelIdentity("m", "r1", 4, {"crop": 224}))
    assert model_key(a) != model_key(ModelIdentity("m", "r2", 4, {"crop": 224}))
