"""The OpenAPI document describes the error answers the API really sends (issue 13 item 10):
``{"error", "detail"}`` for every 4xx/5xx it lists, FastAPI's ``{"detail": [...]}`` nowhere,
and the statuses a route can answer (keys, unknown names, invalid input) listed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from catalens.api.app import create_app
from catalens.settings import Settings

ERROR_BODY = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("openapi-home")
    document: dict[str, Any] = create_app(Settings(home=home, api_keys=("k",))).openapi()
    return document


def _operations(openapi: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", operation)
        for path, methods in openapi["paths"].items()
        for method, operation in methods.items()
    ]


def test_the_error_body_is_the_one_sent(openapi: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in json.dumps(openapi)
    body = openapi["components"]["schemas"]["ErrorBody"]
    assert set(body["required"]) == {"error", "detail"}
    for label, operation in _operations(openapi):
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == ERROR_BODY, (label, status)


def test_every_route_lists_the_errors_it_can_answer(openapi: dict[str, Any]) -> None:
    checked = 0
    for label, operation in _operations(openapi):
        statuses = set(operation["responses"])
        if operation.get("security"):
            assert {"401", "403"} <= statuses, label
        if "{name}" in label or "{product_id}" in label or "{job_id}" in label:
            assert "404" in statuses, label
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in statuses, label
        if operation.get("requestBody"):
            assert "413" in statuses, label
        checked += 1
    assert checked >= 30


def test_documented_statuses_of_the_syncs(openapi: dict[str, Any]) -> None:
    paths = openapi["paths"]
    assert "409" in paths["/v1/collections/{name}/sync"]["post"]["responses"]
    refresh = paths["/refresh-medicines"]["post"]["responses"]
    assert {"409", "502"} <= set(refresh)
