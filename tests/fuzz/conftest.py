"""Fixtures for the fuzzing: the real app under uvicorn on a loopback port, over a small
sample collection embedded with the offline test model."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from catalens.collection.config import SourceConfig
from catalens.sample.catalog import SampleCatalog, generate_sample_catalog
from catalens.service.service import build_service
from catalens.settings import Settings

# A model name the fuzzer makes up must fail at once, not wait on the hub (there is no
# network here anyway): the first miss still costs the transformers import.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@contextmanager
def serve(settings: Settings) -> Iterator[str]:
    """The app for ``settings`` on 127.0.0.1:<free port>, ready; yields its base URL."""
    from catalens.api.app import create_app

    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="error", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-fuzz", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = int(server.servers[0].sockets[0].getsockname()[1])
        url = f"http://127.0.0.1:{port}"
        while httpx.get(f"{url}/ready", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the app never became ready")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def fuzz_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleCatalog:
    return generate_sample_catalog(tmp_path_factory.mktemp("fuzz-sample"), products=4)


@pytest.fixture(scope="session")
def serve_fuzzed(
    tmp_path_factory: pytest.TempPathFactory, mobilenet_dir: Path, fuzz_sample: SampleCatalog
) -> Callable[..., AbstractContextManager[str]]:
    """``with serve_fuzzed(label, **settings) as url:`` a fresh home with collection ``demo``
    (the sample catalog), served by the real app."""

    @contextmanager
    def run(label: str, **overrides: object) -> Iterator[str]:
        values: dict[str, object] = {
            "home": tmp_path_factory.mktemp(label),
            "model": str(mobilenet_dir),
            "batch_size": 8,
            "query_zooms": (1.0,),
            "url_fetch_timeout": 2.0,
            **overrides,
        }
        settings = Settings(**values)  # type: ignore[arg-type]
        service = build_service(settings)
        try:
            service.ingest("demo", SourceConfig(location=str(fuzz_sample.catalog_csv)))
        finally:
            service.close()
        saved = {key: os.environ.get(key) for key in OFFLINE}
        os.environ.update(OFFLINE)
        try:
            with serve(settings) as url:
                yield url
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    return run
