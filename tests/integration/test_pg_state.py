"""The PostgreSQL state beyond the contract suite: the registry of a database's collections,
schema versions, copies, writers in several processes, and a writer killed mid-apply."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from psycopg import sql

from catalens.errors import AlreadyExistsError, CollectionNotFoundError, StoreError
from catalens.ledger.pg_registry import PgDatabase
from catalens.ledger.pg_state import PgState
from catalens.ledger.pg_state_schema import REGISTRY
from catalens.ledger.state import ChangeSet, ImageChange
from catalens.types import Product
from pgdb import fresh_database

pytestmark = pytest.mark.postgres

DIM = 4


@pytest.fixture
def dsn(pg_dsn: str) -> Iterator[str]:
    with fresh_database(pg_dsn) as made:
        yield made


@pytest.fixture
def database(dsn: str) -> Iterator[PgDatabase]:
    opened = PgDatabase(dsn)
    yield opened
    opened.close()


def _made(database: PgDatabase, name: str) -> PgState:
    state = database.create(name)
    state.set_config({"name": name})
    return state


def _products(state: PgState, *ids: str) -> None:
    hashes = [f"h-{i}" for i in ids]
    state.save_vectors(hashes, np.ones((len(ids), DIM), dtype=np.float32))
    state.apply(
        ChangeSet(
            products=[Product(i, i.upper(), (f"{i}.jpg",)) for i in ids],
            images=[
                ImageChange(i, f"{i}.jpg", 0, h, "ok") for i, h in zip(ids, hashes, strict=True)
            ],
        )
    )


def test_the_registry_lists_only_collections_with_a_config(database: PgDatabase) -> None:
    unfinished = database.create("shop")
    assert database.names() == [] and not database.holds("shop")
    assert database.open("shop").schema == unfinished.schema  # its creator can reopen it
    # A creator that died before saving the config leaves a name the next create takes.
    state = _made(database, "shop")
    assert state.schema != unfinished.schema
    assert database.names() == ["shop"] and database.holds("shop")
    with pytest.raises(AlreadyExistsError):
        database.create("shop")
    _made(database, "a.b")
    _made(database, "a_b")
    assert database.names() == ["a.b", "a_b", "shop"]
    database.delete("shop")
    assert database.names() == ["a.b", "a_b"]
    with pytest.raises(CollectionNotFoundError):
        database.open("shop")
    with pytest.raises(CollectionNotFoundError):
        database.delete("shop")
    with pytest.raises(CollectionNotFoundError):
        state.set_config({"name": "shop"})  # its rows went with it


def test_a_failed_create_is_discarded_without_touching_a_newer_one(
    database: PgDatabase,
) -> None:
    failed = database.create("shop")
    newer = _made(database, "shop")
    database.discard(failed.schema)
    assert database.names() == ["shop"] and database.open("shop").schema == newer.schema


def test_a_schema_newer_than_this_code_is_refused(database: PgDatabase) -> None:
    state = _made(database, "shop")
    with database.connection() as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (version) VALUES (99)").format(
                sql.Identifier(state.schema, "schema_version")
            )
        )
    with pytest.raises(StoreError, match="newer"):
        database.open("shop")


def test_a_copy_keeps_image_ids_and_new_ones_follow(database: PgDatabase) -> None:
    source = _made(database, "shop")
    _products(source, "p1", "p2")
    source.add_negative("p1", np.ones(DIM, dtype=np.float32))
    copy = database.copy("shop", "copy", {"name": "copy"})
    assert copy.config() == {"name": "copy"} and source.config() == {"name": "shop"}
    assert copy.all_images() == source.all_images()
    assert copy.generation == source.generation and copy.negative_count() == 1
    _products(copy, "p3")
    (new,) = [r.image_id for r in copy.images_of("p3")]
    assert new > max(r.image_id for r in source.all_images().values())
    assert source.product_ids() == {"p1", "p2"}
    with pytest.raises(AlreadyExistsError):
        database.copy("shop", "copy", {"name": "copy"})
    with pytest.raises(CollectionNotFoundError):
        database.copy("nope", "other", {"name": "other"})


def test_writers_in_several_processes_take_turns(dsn: str) -> None:
    handles = [PgDatabase(dsn) for _ in range(3)]
    try:
        _made(handles[0], "shop")
        states = [h.open("shop") for h in handles]
        errors: list[BaseException] = []

        def write(state: PgState, n: int) -> None:
            try:
                for round_ in range(5):
                    # Every writer adds the same images: only one insert each may win.
                    _products(state, *(f"p{i}" for i in range(round_ * 4, round_ * 4 + 4)))
                    state.apply(ChangeSet(products=[Product(f"own{n}-{round_}", "x", ())]))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(states)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert states[0].generation == 3 * 5 * 2
        assert len(states[1].all_images()) == 20
        assert states[2].counts()["products"] == 20 + 15
    finally:
        for handle in handles:
            handle.close()


_KILLED_WRITER = """
import sys
import numpy as np
from catalens.ledger.pg_registry import PgDatabase
from catalens.ledger.pg_state_writes import apply_changes
from catalens.ledger.state import ChangeSet
from catalens.types import Product

state = PgDatabase(sys.argv[1]).open("shop")
with state._pool.connection() as conn, conn.transaction():
    apply_changes(conn, state._q, state.schema, ChangeSet(
        products=[Product("new", "New", ())], removed_products=["p1"]))
    print("applied", flush=True)
    sys.stdin.read()  # until killed
"""


def test_a_writer_killed_mid_apply_leaves_the_previous_state(
    database: PgDatabase, dsn: str, tmp_path: Path
) -> None:
    state = _made(database, "shop")
    _products(state, "p1", "p2")
    before = (state.product_ids(), state.generation, state.change_marker())
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    with subprocess.Popen(
        [sys.executable, str(script), dsn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline().strip() == "applied"
            # Written but not committed: nobody else sees it.
            assert (state.product_ids(), state.generation, state.change_marker()) == before
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait()
    assert (state.product_ids(), state.generation, state.change_marker()) == before
    # The server let go of the dead writer's lock: the next writer goes ahead.
    _products(state, "p3")
    assert state.product_ids() == {"p1", "p2", "p3"} and state.generation == 2
    with database.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(REGISTRY, "collections"))
        ).fetchone()
    assert row == (1,)
