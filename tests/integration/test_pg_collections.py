"""Collections that live entirely in PostgreSQL: a replica needs only the DSN and a model.

Two services on the fake embedder, each with its own empty home, share one real database
(pgserver): what one ingests the other lists and searches with the same results, a
``query_id`` one returns takes feedback through the other, and changes through one are
there for the other when it opens the collection again. Nothing is written under either
home."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from catalens.collection.config import SourceConfig
from catalens.errors import AlreadyExistsError, CollectionNotFoundError
from catalens.ledger.pg_state import PgState
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import CatalensService
from catalens.service.trusted import TRUSTED_REFS
from catalens.types import Hit, Product
from pgdb import fresh_database

pytestmark = pytest.mark.postgres

Make = Callable[..., CatalensService]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("pg-sample"), products=6)


@pytest.fixture
def dsn(pg_dsn: str) -> Iterator[str]:
    with fresh_database(pg_dsn) as made:
        yield made


@pytest.fixture
def replica(dsn: str, make_fake_service: Make, tmp_path: Path) -> Make:
    """A service with an empty home of its own (``home`` names it) on the test's database
    (made before the services and dropped after they are closed)."""

    def make(home: str) -> CatalensService:
        return make_fake_service(home=tmp_path / home, store=dsn)

    return make


def _ranked(hits: list[Hit]) -> list[tuple[str, float, str]]:
    return [(h.product_id, round(h.score, 5), h.image) for h in hits]


def _photo(sample: SampleCatalog, index: int = 0) -> bytes:
    return sample.products[index].shopper_photos[0].read_bytes()


def _no_state_in_home(service: CatalensService) -> bool:
    """No collection, ledger or query log under the service's home (locks may be there)."""
    home = service.settings.home
    kept = ("collection.json", "catalog.sqlite", "queries.sqlite")
    return not any(p.name in kept for p in home.rglob("*"))


def test_a_second_replica_lists_searches_and_takes_feedback(
    replica: Make, sample: SampleCatalog
) -> None:
    a = replica("a")
    report = a.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    assert report.products_added == 6 and report.images_embedded > 0
    b = replica("b")
    assert b.collection_names() == ["shop"]
    (summary,) = b.summaries()
    assert (summary.products, summary.images) == (6, report.images_embedded)
    first = a.query("shop", image=_photo(sample), top_k=3)
    second = b.query("shop", image=_photo(sample), top_k=3)
    assert first.hits and _ranked(first.hits) == _ranked(second.hits)
    assert first.hits[0].product_id == sample.products[0].id
    # A query_id answered by one replica takes feedback through the other.
    assert first.query_id is not None
    done = b.feedback(
        "shop", verdict="correct", product_id=sample.products[0].id, query_id=first.query_id
    )
    assert done.view is not None and done.added
    shop = a.collection("shop")
    assert [p.ref for p in shop.ledger.confirmed_photos()] == [done.view.ref]
    assert shop.ledger.photo_bytes(done.view.ref) == _photo(sample)
    assert isinstance(shop.ledger, PgState)
    assert _no_state_in_home(a) and _no_state_in_home(b)


def test_an_upsert_through_one_replica_is_there_for_the_other_on_reopen(
    replica: Make, sample: SampleCatalog, tmp_path: Path
) -> None:
    a = replica("a")
    a.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    b = replica("b")
    assert b.collection("shop").info()["products"] == 6
    # A product that looks like nothing in the catalog: a flat image of an odd colour.
    odd = tmp_path / "odd.png"
    Image.new("RGB", (64, 64), (3, 250, 120)).save(odd)
    a.upsert_products("shop", [Product("odd", "Odd one", (str(odd),))], trusted=TRUSTED_REFS)
    assert a.search("shop", image=odd.read_bytes(), top_k=1)[0].product_id == "odd"
    b.close()
    again = replica("b")
    assert again.collection("shop").info()["products"] == 7
    (hit,) = again.search("shop", image=odd.read_bytes(), top_k=1)
    assert (hit.product_id, hit.title) == ("odd", "Odd one")
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    a.delete_products("shop", ["odd"])
    assert "odd" not in replica("c").collection("shop").ledger.product_ids()


def test_create_copy_and_delete_are_seen_by_every_replica(
    replica: Make, sample: SampleCatalog
) -> None:
    a, b = replica("a"), replica("b")
    a.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    with pytest.raises(AlreadyExistsError):
        b.create_collection("shop")
    copy = b.copy_collection("shop", "shop-copy")
    assert copy.info()["products"] == 6
    assert a.collection_names() == ["shop", "shop-copy"]
    expected = _ranked(a.search("shop", image=_photo(sample, 1), top_k=4))
    assert _ranked(a.search("shop-copy", image=_photo(sample, 1), top_k=4)) == expected
    a.delete_collection("shop-copy")
    assert b.collection_names() == ["shop"]
    with pytest.raises(CollectionNotFoundError):
        replica("c").collection("shop-copy")
    # Made again under the same name, it starts empty (not the deleted one's rows).
    b.create_collection("shop-copy")
    assert a.collection("shop-copy").info()["products"] == 0
    # A forced re-ingest rebuilds it in the database.
    report = a.ingest("shop", SourceConfig(location=str(sample.catalog_csv)), force=True)
    assert report.products_added == 6
    assert _ranked(b.search("shop", image=_photo(sample, 1), top_k=4)) == expected
    assert _no_state_in_home(b)


def test_folder_collections_are_listed_alongside(
    replica: Make, sample: SampleCatalog, tmp_path: Path
) -> None:
    a = replica("a")
    a.ingest("shop", SourceConfig(location=str(sample.catalog_csv)))
    a.ingest("local", SourceConfig(location=str(sample.catalog_csv)), store="faiss")
    assert (tmp_path / "a" / "collections" / "local" / "collection.json").is_file()
    assert a.collection_names() == ["local", "shop"]
    assert replica("b").collection_names() == ["shop"]
    in_database = a.search("shop", image=_photo(sample, 2), top_k=3)
    in_folder = a.search("local", image=_photo(sample, 2), top_k=3)
    assert [h.product_id for h in in_folder] == [h.product_id for h in in_database]
    assert [h.score for h in in_folder] == pytest.approx([h.score for h in in_database])
    a.copy_collection("local", "local-copy")
    assert (tmp_path / "a" / "collections" / "local-copy").is_dir()
    a.delete_collection("local")
    assert a.collection_names() == ["local-copy", "shop"]
