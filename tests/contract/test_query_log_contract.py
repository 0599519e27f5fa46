"""One suite, every QueryLog: kept photo queries and their vectors, forgotten by age and by
count, shared by every handle (process, replica) on the same log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from catalens.ledger.query_log import QueryLog, QueryVectors, SqliteQueryLog

Open = Callable[..., QueryLog]
"""Opens a handle on the test's log with the given retention options."""


def _vectors(seed: int) -> dict[str, QueryVectors]:
    rng = np.random.default_rng(seed)
    return {
        model: QueryVectors(rng.random(4, dtype=np.float32), rng.random(4, dtype=np.float32))
        for model in ("m", "n")
    }


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    with ExitStack() as stack:  # closes what was opened, last first
        if request.param == "sqlite":

            def open_sqlite(**options: Any) -> QueryLog:
                return stack.enter_context(
                    closing(SqliteQueryLog(tmp_path / "queries.sqlite", **options))
                )

            yield open_sqlite
        else:
            from catalens.ledger.pg_query_log import PgQueryLog
            from catalens.ledger.pg_registry import PgDatabase
            from pgdb import fresh_database

            dsn = stack.enter_context(fresh_database(request.getfixturevalue("pg_dsn")))

            def open_pg(**options: Any) -> QueryLog:
                # A database handle of its own, as another replica has.
                database = stack.enter_context(closing(PgDatabase(dsn)))
                return stack.enter_context(closing(PgQueryLog(database, **options)))

            yield open_pg


def test_a_kept_query_comes_back_with_its_vectors(open_log: Open) -> None:
    log = open_log()
    vectors = _vectors(0)
    query_id = log.keep(b"photo", vectors)
    assert query_id
    found = log.get(query_id)
    assert found is not None
    kept, by_model = found
    assert (kept.query_id, kept.image) == (query_id, b"photo")
    assert kept.created_at > 0
    assert sorted(by_model) == ["m", "n"]
    for model in ("m", "n"):
        np.testing.assert_array_equal(by_model[model].query, vectors[model].query)
        np.testing.assert_array_equal(by_model[model].plain, vectors[model].plain)
    by_model["m"].query[0] = 7.0  # the arrays given back are the caller's to change
    assert log.get("no-such-id") is None


def test_another_handle_finds_a_kept_query(open_log: Open) -> None:
    first, second = open_log(), open_log()
    query_id = first.keep(b"photo", _vectors(1))
    assert query_id
    found = second.get(query_id)
    assert found is not None and found[0].image == b"photo"
    assert len(second) == 1


def test_queries_are_forgotten_by_age_and_by_count(open_log: Open) -> None:
    log = open_log(retention_seconds=60, retention_max=2)
    first = log.keep(b"1", _vectors(1), now=1000.0)
    second = log.keep(b"2", _vectors(2), now=1001.0)
    assert first and second and first != second
    assert log.get(first, now=1059.0) is not None
    assert log.get(first, now=1061.0) is None  # too old, even before a prune
    third = log.keep(b"3", _vectors(3), now=1002.0)
    assert third
    assert len(log) == 2  # the oldest went
    assert log.get(first, now=1002.0) is None
    assert log.get(third, now=1002.0) is not None
    log.keep(b"4", _vectors(4), now=2000.0)
    assert len(log) == 1  # the rest expired


def test_a_log_that_keeps_nothing(open_log: Open) -> None:
    log = open_log(retention_max=0)
    assert not log.enabled
    assert log.keep(b"x", _vectors(0)) is None
    assert open_log(retention_seconds=0).keep(b"x", _vectors(0)) is None
