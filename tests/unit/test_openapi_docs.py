"""The OpenAPI document reads like a product (issue 12): every field described, examples on
the search, upsert and feedback bodies, the compatibility routes tagged ``compatibility``, and
summaries that say what an operation does rather than where it came from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from catalens.api.app import create_app
from catalens.api.schemas import (
    FeedbackIn,
    FeedbackOut,
    ProductIn,
    SearchRequest,
    SearchResponse,
    UpsertReportOut,
)
from catalens.settings import Settings

# The routes older clients call, next to the native /v1 ones.
COMPATIBILITY = {
    "/",
    "/search",
    "/refresh-medicines",
    "/rebuild-index",
    "/preload-model",
    "/models",
    "/all/search",
    "/search_products/",
    "/{model}/search",
    "/extract-features",
    "/embed-image",
}
SEARCH = ("post", "/v1/collections/{name}/search")
UPSERT = ("put", "/v1/collections/{name}/products")
FEEDBACK = ("post", "/v1/collections/{name}/feedback")


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("openapi-docs-home")
    document: dict[str, Any] = create_app(Settings(home=home, api_keys=("k",))).openapi()
    return document


def _operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in openapi["paths"].items()
        for method, operation in methods.items()
    ]


def _resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    resolved: dict[str, Any] = openapi["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return resolved


def _json_body(openapi: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    content = openapi["paths"][path][method]["requestBody"]["content"]["application/json"]
    body: dict[str, Any] = content
    return body


def _examples(openapi: dict[str, Any], schema: dict[str, Any]) -> list[Any]:
    """The examples a schema shows: its own, its referenced model's, or its alternatives'."""
    schema = _resolve(openapi, schema)
    found = list(schema.get("examples", []))
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []):
        found += _examples(openapi, alternative)
    return found


def _properties(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every property of every model: the components, and the request bodies written inline."""
    schemas: list[tuple[str, dict[str, Any]]] = list(openapi["components"]["schemas"].items())
    for method, path, operation in _operations(openapi):
        for media, content in operation.get("requestBody", {}).get("content", {}).items():
            schemas.append((f"{method.upper()} {path} ({media})", content.get("schema", {})))
    return [
        (f"{name}.{prop}", spec)
        for name, schema in schemas
        for prop, spec in schema.get("properties", {}).items()
    ]


def test_every_field_is_described(openapi: dict[str, Any]) -> None:
    properties = _properties(openapi)
    assert len(properties) > 100, "the walk found the models"
    undescribed = [name for name, spec in properties if not spec.get("description", "").strip()]
    assert not undescribed, f"fields without a description: {undescribed}"


@pytest.mark.parametrize(
    ("route", "request_model", "response_model"),
    [
        (SEARCH, SearchRequest, SearchResponse),
        (UPSERT, ProductIn, UpsertReportOut),
        (FEEDBACK, FeedbackIn, FeedbackOut),
    ],
)
def test_main_bodies_show_valid_examples(
    openapi: dict[str, Any],
    route: tuple[str, str],
    request_model: type[BaseModel],
    response_model: type[BaseModel],
) -> None:
    method, path = route
    body = _json_body(openapi, method, path)
    examples = _examples(openapi, body["schema"]) + [
        e.get("value") for e in body.get("examples", {}).values()
    ]
    assert examples, f"{method.upper()} {path} shows no example body"
    for example in examples:
        request_model.model_validate(example)  # an example a client can send as is
    answer = openapi["paths"][path][method]["responses"]["200"]["content"]["application/json"]
    assert _examples(openapi, answer["schema"]), f"{method.upper()} {path} shows no answer"
    # The document leaves out nulls, so the answers are checked as written.
    for example in response_model.model_json_schema()["examples"]:
        response_model.model_validate(example)


def test_compatibility_routes_are_tagged_and_apart(openapi: dict[str, Any]) -> None:
    tagged = {path for _, path, op in _operations(openapi) if "compatibility" in op["tags"]}
    assert tagged == COMPATIBILITY
    for _, path, operation in _operations(openapi):
        if path.startswith("/v1/"):
            assert operation["tags"] == ["v1"], path


def test_summaries_say_what_an_operation_does(openapi: dict[str, Any]) -> None:
    for method, path, operation in _operations(openapi):
        label = f"{method.upper()} {path}"
        summary = operation.get("summary", "")
        assert summary, f"{label} has no summary"
        # FastAPI's default is the function name title-cased ("Search Medicines"); the
        # operation id starts with that name.
        as_name = summary.lower().replace(" ", "_")
        assert not operation["operationId"].startswith(as_name), f"{label}: {summary!r}"


def test_nothing_shown_speaks_of_seeds(openapi: dict[str, Any]) -> None:
    # Which seed a route serves is the code's business (comments), not a reader of /docs'.
    shown = [
        f"{name}: {text}"
        for name, text in _texts(openapi)
        if re.search(r"\bseeds?\b", text, re.IGNORECASE)
    ]
    assert not shown, shown


def _texts(node: Any, name: str = "") -> list[tuple[str, str]]:
    """Every summary, description and title in the document, with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"summary", "description", "title"} and isinstance(value, str):
                found.append((name, value))
            else:
                found += _texts(value, f"{name}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _texts(value, f"{name}/{index}")
    return found
