"""Ingestion on a Ray cluster: tasks read, hash and decode images, and long-lived actors that
hold the model embed them, while the driver keeps the ledger as the local engine does.

The driver plans the run (``Ingestor``: the catalog, what the ledger knew) and applies it;
this engine only replaces the in-process threads that load and embed (``LoadEngine``). It
streams the tasks through the cluster in batches of the ingest's batch size:

1. *load* (a task per batch): read each image's bytes, hash them (``pipeline.read_image``: an
   unchanged local file is not even read, an unchanged URL not decoded) and decode the new
   ones into the model's input (its card's preprocessing). The task returns two objects: a
   small table of hashes and errors, which the driver reads, and the pixels, which stay in
   the object store.
2. The driver asks the ledger which new hashes already have a vector (another product's
   image, or a killed run's saved batches): those are reused, not embedded. Each remaining
   hash is embedded once: the driver hands the pixels' reference and the rows to embed to a
   model actor (one per GPU on a cluster with GPUs, else one per node), which reads them from
   its node's object store. The driver saves each batch of vectors to the ledger's vector
   cache as it arrives, so a killed driver loses at most the batches in flight and its re-run
   embeds only what is missing; the collection changes only in the one ``Collection.apply``
   at the end, as with the local engine.

Ray Core, not Ray Data: a Ray Data execution costs about 0.6 s to plan and start, and its
actor pool starts (and loads the model) anew for every execution, seconds per run that on a
small sync outweigh the work. The model actors here are reused by the driver's next runs with
the same model, until it disconnects or ``keep_actors_s`` after its last run. Decoding all
new bytes in the load task saves a second pass over them; what it wastes is the decoding of
bytes that turn out to be known (a duplicate, or a resumed run's saved batches).

Every node needs catalens and the model; image paths must be readable where tasks run (a
shared filesystem or URLs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.embedders.base import Embedder
from catalens.embedders.preprocess import Preprocessing
from catalens.errors import CatalensError, ModelError, ModelMismatchError, missing_extra
from catalens.ingest.decode import ImageLimits
from catalens.ingest.fetch import ImageFetcher
from catalens.ingest.pipeline import (
    ImageTask,
    Ingestor,
    IngestReport,
    LoadedImage,
    image_pixels,
    read_image,
)
from catalens.types import ModelIdentity

__all__ = ["EmbedderFactory", "FetcherFactory", "RayEngine", "import_ray", "release_actors"]

EmbedderFactory = Callable[[], Embedder]
"""Loads the collection's model in an actor (pickled to the cluster: no open handles)."""
FetcherFactory = Callable[[], ImageFetcher]
"""Makes the fetcher a task reads images with (the operator's, or the guarded one)."""

Meta = dict[str, list[Any]]

ActorKey = tuple[str, str, int | None]
"""(connection, model, requested count): actors are shared by the runs whose key matches."""


def import_ray() -> ModuleType:
    """``ray``, or a one-line install hint."""
    try:
        import ray
    except ImportError as exc:
        raise missing_extra("ray", "the ray ingest engine", exc.name) from exc
    return ray


class _ActorCache:
    """This driver's model actors: kept across its runs (a model loads once), ended once no
    run has used them for a while (on a GPU cluster an idle actor still holds its GPU)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actors: dict[ActorKey, list[Any]] = {}
        self._running = 0
        self._timer: threading.Timer | None = None

    def acquire(self, key: ActorKey, start: Callable[[], list[Any]]) -> tuple[list[Any], bool]:
        """The actors for ``key`` (started now if needed: then ``True``), for one run."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._running += 1
            for stale in [k for k in self._actors if k[0] != key[0]]:
                del self._actors[stale]  # a previous connection's: gone with it
            if key in self._actors:
                return self._actors[key], False
            try:
                actors = self._actors[key] = start()
            except BaseException:
                self._running -= 1
                raise
            return actors, True

    def done(self, keep_s: float) -> None:
        """One run is over; the actors end ``keep_s`` seconds after the last one."""
        with self._lock:
            self._running -= 1
            if self._running == 0 and self._actors:
                self._timer = threading.Timer(keep_s, self._expire)
                self._timer.daemon = True
                self._timer.start()

    def drop(self, key: ActorKey) -> None:
        """End ``key``'s actors now (they loaded the wrong model)."""
        with self._lock:
            actors = self._actors.pop(key, [])
        ray = import_ray()
        for actor in actors:
            ray.kill(actor)

    def release(self) -> None:
        """End every actor now (no run may be using them)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            actors, self._actors = self._actors, {}
        ray = import_ray()
        if ray.is_initialized():
            for group in actors.values():
                for actor in group:
                    with contextlib.suppress(Exception):  # one of a connection now gone
                        ray.kill(actor)

    def _expire(self) -> None:
        with self._lock:
            if self._running:
                return
        self.release()


_ACTORS = _ActorCache()


def release_actors() -> None:
    """End the model actors this driver keeps (the next run starts and loads new ones)."""
    _ACTORS.release()


@dataclass(frozen=True)
class _LoadOptions:
    """What every load task needs, put in the object store once per run."""

    fetcher_factory: FetcherFactory
    revalidate: bool
    preprocessing: Preprocessing
    limits: ImageLimits


@dataclass
class RayEngine:
    """Loads and embeds an ingest's images on Ray (see the module docstring)."""

    embedder_factory: EmbedderFactory
    fetcher_factory: FetcherFactory
    address: str | None = None
    """The cluster to join (``ray.init(address=...)``); ``None`` starts a local one, unless
    this process is already connected (then that connection is used and kept)."""
    actors: int | None = None
    """Model actors; default one per GPU, else one per node (its inference threads use the
    node's cores, as the in-process engine's do, and decoding overlaps with it)."""
    load_batch: int | None = None
    """Images per load task; default the ingest's batch size (one load, one embed call)."""
    loads_in_flight: int | None = None
    """Load tasks at a time (each takes a CPU); default half the cluster's CPUs, at least
    one: the other half runs inference, as in the in-process engine."""
    keep_actors_s: float = 120.0
    """How long the model actors outlive this driver's last run (the next one reuses them)."""

    def load_all(
        self, ingestor: Ingestor, tasks: list[ImageTask], report: IngestReport
    ) -> Iterator[LoadedImage]:
        ray = import_ray()
        identity = ingestor.embedder.identity
        try:
            preprocessing = Preprocessing.from_card(identity.preprocessing)
        except ModelError as exc:
            raise ModelError(
                f"the ray engine needs a model whose card describes its preprocessing: {exc}"
            ) from exc
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        try:
            context = ray.get_runtime_context()
            # The node's id too: a new cluster numbers its jobs from one again.
            connection = f"{context.get_node_id()}/{context.get_job_id()}"
            key: ActorKey = (connection, identity.key(), self.actors)
            actors, fresh = _ACTORS.acquire(key, lambda: self.start_actors(ray))
            try:
                run = _Run(self, ray, ingestor, report, preprocessing, actors, fresh)
                yield from run.stream(tasks)
            except ModelMismatchError:
                _ACTORS.drop(key)
                raise
            finally:
                _ACTORS.done(self.keep_actors_s)
        finally:
            if started_here:
                _ACTORS.release()
                ray.shutdown()

    def start_actors(self, ray: ModuleType) -> list[Any]:
        """Model actors for this cluster. They reserve no CPU: the model's threads share
        their node's cores with the decoding tasks, as in the in-process engine (how many
        loads run at once is the engine's to bound), and an idle actor starves nobody."""
        gpus = int(ray.cluster_resources().get("GPU", 0))
        options: dict[str, Any] = {"max_restarts": 1, "max_task_retries": 1, "num_cpus": 0}
        if gpus:
            count = self.actors or gpus
            options["num_gpus"] = 1
        else:
            nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
            count = self.actors or max(1, nodes)
            options["scheduling_strategy"] = "SPREAD"
        actor_class = ray.remote(_ModelActor).options(**options)
        return [actor_class.remote(self.embedder_factory) for _ in range(count)]


class _Run:
    """One ingest's state on the driver while its batches stream through the cluster."""

    def __init__(
        self,
        engine: RayEngine,
        ray: ModuleType,
        ingestor: Ingestor,
        report: IngestReport,
        preprocessing: Preprocessing,
        actors: list[Any],
        fresh: bool,
    ) -> None:
        self.engine, self.ray, self.ingestor, self.report = engine, ray, ingestor, report
        self.identity = ingestor.embedder.identity
        self.actors = actors
        # A new actor's model is checked before its first batch (its load overlaps the reads).
        self.unchecked = [actor.identity.remote() for actor in self.actors] if fresh else []
        self.busy = [0] * len(self.actors)
        self.options = ray.put(
            _LoadOptions(
                engine.fetcher_factory, ingestor.revalidate_urls, preprocessing, ingestor.limits
            )
        )
        self.load = ray.remote(_load).options(num_returns=2, num_cpus=1)
        cpus = int(ray.cluster_resources().get("CPU", 2))
        self.max_loads = engine.loads_in_flight or max(1, cpus // 2)
        self.claimed: set[str] = set()
        """Hashes this run embeds (saved, or on their way to an actor)."""
        self.done = 0
        self.total = 0

    def stream(self, tasks: list[ImageTask]) -> Iterator[LoadedImage]:
        ray, size = self.ray, self.engine.load_batch or self.ingestor.batch_size
        self.total = len(tasks)
        self._progress(0)
        starts = iter(range(0, len(tasks), max(1, size)))
        loads: dict[Any, tuple[list[ImageTask], Any]] = {}
        embeds: dict[Any, tuple[int, list[LoadedImage]]] = {}
        more = True
        try:
            while True:
                # Bounded: a few batches of pixels in the object store, each actor with one
                # batch queued behind the one it embeds.
                while more and len(loads) < self.max_loads and len(embeds) < 2 * len(self.actors):
                    start = next(starts, None)
                    if start is None:
                        more = False
                        break
                    batch = tasks[start : start + size]
                    meta, pixels = self.load.remote(batch, self.options)
                    loads[meta] = (batch, pixels)
                if not loads and not embeds:
                    break
                [ready], _ = ray.wait([*embeds, *loads], num_returns=1)
                if ready in loads:
                    batch, pixels = loads.pop(ready)
                    yield from self._loaded(batch, _get(ray, ready), pixels, embeds)
                else:
                    index, held = embeds.pop(ready)
                    self.busy[index] -= 1
                    yield from self._embedded(held, _get(ray, ready))
        finally:
            for ref in loads:  # an interrupted run: its reads are no longer wanted
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
        self._progress(self.total)

    def _loaded(
        self,
        batch: list[ImageTask],
        meta: Meta,
        pixels: Any,
        embeds: dict[Any, tuple[int, list[LoadedImage]]],
    ) -> Iterator[LoadedImage]:
        """Sort a loaded batch: failed, unchanged and known images are done; the first image
        of each new hash goes to a model actor with the row of its pixels."""
        rows = list(zip(batch, *(meta[c] for c in _META), strict=True))
        # New bytes: decoded (a row of pixels), or not decodable (an error with a hash).
        fresh = {digest for _, digest, _, _, error, slot in rows if slot >= 0 or (digest and error)}
        known = self.ingestor.collection.ledger.known_hashes(fresh - self.claimed) | self.claimed
        slots: list[int] = []
        held: list[LoadedImage] = []
        done: list[LoadedImage] = []
        for task, digest, size, mtime, error, slot in rows:
            loaded = LoadedImage(task, digest, None, _optional(size), _optional(mtime))
            if digest in known:  # its vector is reused, even if these bytes did not decode
                done.append(loaded)
            elif error:
                done.append(LoadedImage(task, error=error))
            elif slot < 0:
                done.append(loaded)  # unchanged
            else:
                self.claimed.add(digest)
                known.add(digest)  # the same bytes later in the batch reuse this vector
                slots.append(slot)
                held.append(replace(loaded, embedded=True))
        if held:
            if self.unchecked:
                self._check_models()
            index = min(range(len(self.actors)), key=self.busy.__getitem__)
            self.busy[index] += 1
            ref = self.actors[index].embed.remote(pixels, np.asarray(slots, dtype=np.int64))
            embeds[ref] = (index, held)
        yield from done
        self._progress(self.done + len(done))

    def _embedded(
        self, held: list[LoadedImage], vectors: NDArray[np.float32]
    ) -> Iterator[LoadedImage]:
        hashes = [loaded.content_hash or "" for loaded in held]
        self.ingestor.collection.ledger.save_vectors(hashes, vectors)
        self.report.images_embedded += len(hashes)
        yield from held
        self._progress(self.done + len(held))

    def _check_models(self) -> None:
        identities, self.unchecked = _get(self.ray, self.unchecked), []
        for loaded in identities:
            if loaded.key() != self.identity.key():
                raise ModelMismatchError(
                    f"a Ray worker loaded {loaded.name} ({loaded.revision}), not the "
                    f"collection's model {self.identity.name} ({self.identity.revision})"
                )

    def _progress(self, done: int) -> None:
        self.done = done
        self.ingestor.progress("embed", done, self.total)


_META = ("hash", "size", "mtime", "error", "slot")
"""A load task's table, one entry per image: its hash, file size and mtime (-1: none), why
it failed (empty: it did not), and its row in the pixels (-1: not decoded)."""


def _optional(value: int) -> int | None:
    return None if value < 0 else value


def _get(ray: ModuleType, refs: Any) -> Any:
    """``ray.get``, raising a catalens error that a task raised as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CatalensError):
            raise exc.cause from None
        raise


# -- what runs on the cluster -------------------------------------------------------------


def _load(tasks: list[ImageTask], options: _LoadOptions) -> tuple[Meta, NDArray[np.float32]]:
    """Task: each image's hash (or why it failed) and, for new bytes, the model's input."""
    meta: Meta = {column: [] for column in _META}
    decoded: list[NDArray[np.float32]] = []
    slot_of: dict[str, int] = {}  # the same bytes twice in a batch are decoded once
    draft_size = options.preprocessing.draft_size()
    fetcher = _worker_fetcher(options.fetcher_factory)
    for task in tasks:
        loaded, data = read_image(task, fetcher, revalidate=options.revalidate)
        digest = loaded.content_hash or ""
        error, slot = loaded.error or "", -1
        if data is not None and digest in slot_of:
            slot = slot_of[digest]
        elif data is not None:
            try:
                decoded.append(
                    image_pixels(
                        data,
                        task.ref,
                        options.preprocessing,
                        limits=options.limits,
                        draft_size=draft_size,
                    )
                )
                slot = slot_of[digest] = len(decoded) - 1
            except CatalensError as exc:  # one bad image is recorded; else the run stops
                error = str(exc)
        meta["hash"].append(digest)
        meta["size"].append(-1 if loaded.file_size is None else loaded.file_size)
        meta["mtime"].append(-1 if loaded.file_mtime_ns is None else loaded.file_mtime_ns)
        meta["error"].append(error)
        meta["slot"].append(slot)
    shape = (0, *options.preprocessing.input_shape)
    pixels = np.stack(decoded) if decoded else np.zeros(shape, dtype=np.float32)
    return meta, pixels


_FETCHER: tuple[bytes, ImageFetcher] | None = None
"""This worker process's fetcher and the pickled factory that made it."""


def _worker_fetcher(factory: FetcherFactory) -> ImageFetcher:
    """The fetcher ``factory`` makes, kept by this worker for its next tasks: making one
    (an HTTP client with its TLS context, the download cache's index) costs 60-120 ms, as
    much as decoding a few images. A worker keeps the one its latest factory made."""
    global _FETCHER
    from ray import cloudpickle  # what Ray pickles a task's arguments with

    key: bytes = cloudpickle.dumps(factory)  # type: ignore[no-untyped-call]
    if _FETCHER is not None and _FETCHER[0] == key:
        return _FETCHER[1]
    if _FETCHER is not None:
        _FETCHER[1].close()
        _FETCHER = None
    fetcher = factory()
    _FETCHER = (key, fetcher)
    return fetcher


class _ModelActor:
    """Actor: holds the model and embeds rows of the pixels a load task decoded."""

    def __init__(self, factory: EmbedderFactory) -> None:
        # Ray caps OpenMP at the actor's one CPU; the model, as in the in-process engine,
        # runs on every core of its node (decoding overlaps with it).
        os.environ.pop("OMP_NUM_THREADS", None)
        self._embedder = factory()

    def identity(self) -> ModelIdentity:
        return self._embedder.identity

    def embed(self, pixels: NDArray[np.float32], slots: NDArray[np.int64]) -> NDArray[np.float32]:
        return self._embedder.embed_pixels(np.ascontiguousarray(pixels[slots]))
