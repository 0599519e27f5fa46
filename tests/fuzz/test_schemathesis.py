"""Schemathesis over every operation of the real app, served on loopback: with no keys, and
with keys required everywhere. Any 5xx, or an answer its OpenAPI document does not describe
(status, content type, body, headers), fails; keyed routes must refuse a missing key.

Bounded for CI: ``FUZZ_EXAMPLES`` examples per operation, derandomized so that every CI run
sends the same requests. ``make fuzz`` sets ``CATALENS_FUZZ_EXAMPLES`` higher, and random.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

KEY = "fuzz-key-0123456789"
FUZZ_EXAMPLES = int(os.environ.get("CATALENS_FUZZ_EXAMPLES", "20"))
REPEATABLE = "CATALENS_FUZZ_EXAMPLES" not in os.environ
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=REPEATABLE,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, unshrunk
    suppress_health_check=list(HealthCheck),
)

pytestmark = pytest.mark.slow


def _schema(url: str, **headers: str) -> Any:
    return schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers)


def _cases(operation: Any) -> st.SearchStrategy[Any]:
    """Valid requests and invalid ones (where the operation has anything to get wrong)."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


def _fuzz(schema: Any, checks: list[Any], headers: dict[str, str]) -> list[str]:
    """Every operation of ``schema`` fuzzed in turn; the failures, one line each."""
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30, "the schema lost operations"
    for operation in operations:

        @FUZZ_SETTINGS
        @given(case=_cases(operation))
        def run(case: Any) -> None:
            response = case.call_and_validate(headers=headers, checks=checks, timeout=60)
            statuses[response.status_code] += 1

        try:
            run()
        except (
            Exception,
            BaseExceptionGroup,
        ) as exc:  # collect them all: one run reports every broken route
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}")
    # The fuzzer got past validation and the keys: it reached the routes' work.
    assert statuses[200] > len(operations), statuses
    print(f"statuses over {len(operations)} operations: {dict(sorted(statuses.items()))}")
    return failures


def test_without_keys(serve_fuzzed: Callable[..., AbstractContextManager[str]]) -> None:
    with serve_fuzzed("fuzz-open") as url:
        failures = _fuzz(_schema(url), CHECKS, {})
    assert not failures, "\n\n".join(failures)


def test_with_keys(serve_fuzzed: Callable[..., AbstractContextManager[str]]) -> None:
    """Keys on every route; the fuzzer sends the key, and ``ignored_auth`` checks that a
    request without it (or with a wrong one) is refused."""
    with serve_fuzzed("fuzz-keyed", api_keys=(KEY,), search_requires_key=True) as url:
        headers = {"X-API-Key": KEY}
        failures = _fuzz(_schema(url, **headers), [*CHECKS, ignored_auth], headers)
    assert not failures, "\n\n".join(failures)
