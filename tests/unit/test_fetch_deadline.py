"""One total deadline per fetch, and a bounded pool of search-by-URL fetches (issue 13.3).

A real loopback host (``slow_hosts.DripServer``) drips its headers a byte at a time, so
every socket read succeeds in time: only a deadline over the whole fetch ends it. Each fetch
runs in a thread that the test waits on for three times the deadline; a fetch still running
then never ended by itself (it ends when the host is stopped at the end of the test).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from catalens.errors import BlockedURLError, BusyError, FetchError
from catalens.ingest.fetch import ImageFetcher
from catalens.service.query_image import QueryFetcher, RemoteURL
from catalens.settings import Settings
from slow_hosts import DripServer


@pytest.fixture
def drip() -> Iterator[DripServer]:
    with DripServer() as server:
        yield server


class Outcome:
    """What a call running in its own thread did: returned, raised, or is still running."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # the test inspects it
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def ended_within(self, seconds: float) -> bool:
        return self.done.wait(seconds)


def _query_fetcher(drip: DripServer, **overrides: object) -> QueryFetcher:
    values: dict[str, object] = {"url_allowlist": (drip.host,), **overrides}
    return QueryFetcher(Settings(**values))  # type: ignore[arg-type]


def test_a_url_search_ends_within_its_total_deadline_whatever_the_host_does(
    drip: DripServer,
) -> None:
    fetcher = _query_fetcher(drip, url_fetch_timeout=1.0)
    try:
        outcome = Outcome(lambda: fetcher.fetch(RemoteURL(drip.url())))
        # A functional bound: the host would hold the fetch for hours; the deadline is 1 s.
        assert outcome.ended_within(3 * 1.0), "the dripping host held the fetch"
        assert isinstance(outcome.error, FetchError)
        assert not isinstance(outcome.error, BlockedURLError)
        assert "timed out" in str(outcome.error)
    finally:
        drip.stop()
        fetcher.close()


def test_a_catalog_fetch_ends_within_its_total_deadline_over_all_retries(
    drip: DripServer, tmp_path: Path
) -> None:
    # Per attempt each read gets 0.3 s; the whole fetch, every retry included, 6 x 0.3 s.
    fetcher = ImageFetcher(tmp_path / "cache", timeout=0.3, retries=5, backoff=0.05)
    try:
        outcome = Outcome(lambda: fetcher.fetch(drip.url()))
        assert outcome.ended_within(3 * 6 * 0.3), "the dripping host held the fetch"
        assert isinstance(outcome.error, FetchError)
        assert "timed out" in str(outcome.error)
    finally:
        drip.stop()
        fetcher.close()


def test_an_explicit_deadline_bounds_a_catalog_fetch(drip: DripServer, tmp_path: Path) -> None:
    fetcher = ImageFetcher(tmp_path / "cache", timeout=30.0, retries=3, deadline=1.0)
    try:
        outcome = Outcome(lambda: fetcher.fetch(drip.url()))
        assert outcome.ended_within(3 * 1.0), "the dripping host held the fetch"
        assert isinstance(outcome.error, FetchError)
    finally:
        drip.stop()
        fetcher.close()


def test_url_searches_past_the_pool_are_refused_as_busy_at_once(drip: DripServer) -> None:
    fetcher = _query_fetcher(drip, url_fetch_timeout=30.0, url_fetch_concurrency=2)
    try:
        held = [Outcome(lambda: fetcher.fetch(RemoteURL(drip.url()))) for _ in range(2)]
        assert drip.wait_active(2), "the two fetches never reached the host"
        third = Outcome(lambda: fetcher.fetch(RemoteURL(drip.url("/other.jpg"))))
        # Refused without waiting for a slot (the held ones would take 30 s).
        assert third.ended_within(10), "the third fetch waited for a slot"
        assert isinstance(third.error, BusyError)
        assert third.error.retry_after > 0
        assert drip.active == 2  # it never reached the host
        assert not any(each.done.is_set() for each in held)
    finally:
        drip.stop()
        fetcher.close()
    # Once the slow host is gone, the slots are free again.
    assert all(each.ended_within(30) for each in held)
