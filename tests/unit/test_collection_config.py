"""A collection's config read back from its state equals the config saved: the round trip
through JSON (sqlite's ``collection.json``, PostgreSQL's ``jsonb``) changes nothing, so a
process that re-reads it (another replica, ``refresh``) holds the same value."""

from __future__ import annotations

import json

from catalens.catalog.mapping import ColumnMapping
from catalens.collection.config import CollectionConfig, SourceConfig
from catalens.search.query_crops import SearchOptions
from catalens.types import ModelIdentity


def _read_back(config: CollectionConfig) -> CollectionConfig:
    return CollectionConfig.from_dict(json.loads(json.dumps(config.to_dict())))


def _config(source: SourceConfig) -> CollectionConfig:
    return CollectionConfig(
        name="shop",
        model_spec="models/mobilenet",
        model=ModelIdentity("mobilenet", "abc", 8, {"mean": [0.5, 0.5, 0.5], "size": 224}),
        store="pgvector",
        index="hnsw",
        source=source,
        search=SearchOptions(query_zooms=(1.0, 1.25), centering=False, aggregation="max"),
        created_at=1718000000.123456,
    )


def test_a_config_with_a_column_mapping_reads_back_equal() -> None:
    # As the CLI makes it: the image columns a tuple.
    source = SourceConfig(
        "https://shop.example/products.json",
        format="rest",
        mapping={"id": "sku", "title": "name", "images": ("image", "extra_images")},
        where={"status": "active"},
        options={"headers": {"X-Shop": "1"}, "items_field": "data", "fields": ("a", "b")},
    )
    config = _config(source)
    again = _read_back(config)
    assert again == config
    assert _read_back(again) == again
    assert again.source is not None and again.source.mapping is not None
    assert ColumnMapping(**again.source.mapping).images == ("image", "extra_images")


def test_lists_and_tuples_make_the_same_source() -> None:
    # As the HTTP API makes it: lists, from JSON.
    from_json = SourceConfig("c.csv", mapping={"id": "sku", "images": ["a", "b"]})
    from_cli = SourceConfig("c.csv", mapping={"id": "sku", "images": ("a", "b")})
    assert from_json == from_cli
    assert _read_back(_config(from_json)) == _config(from_cli)


def test_a_config_without_a_source_reads_back_equal() -> None:
    config = _config(SourceConfig("catalog.csv"))
    assert _read_back(config) == config
    bare = CollectionConfig(name="bare", model_spec="m", model=ModelIdentity("m", "1", 4, {}))
    assert _read_back(bare) == bare
