"""Ingestion on a Ray cluster: Ray Data reads and decodes images in tasks and embeds them in
an actor pool that holds the model, while the driver keeps the ledger as the local engine does.

The driver plans the run (``Ingestor``: the catalog, what the ledger knew) and applies it;
this engine only replaces the in-process threads that load and embed (``LoadEngine``). It
works through the tasks in chunks, two Ray Data passes each:

1. *identify* (tasks): read each image's bytes and hash them (``pipeline.read_image``: an
   unchanged local file is not even read, an unchanged URL not decoded). The chunk is kept
   in the object store; only hashes come back to the driver.
2. The driver asks the ledger which new hashes already have a vector (another product's
   image, or a killed run's saved batches): those are reused, not embedded. Each remaining
   hash is embedded once: *decode* (tasks: safe decoding and the model's preprocessing, from
   its card) and *embed* (``map_batches`` on an actor pool holding the model, one actor per
   GPU when the cluster has GPUs). The driver saves each batch of vectors to the ledger's
   vector cache as it arrives, so a killed driver loses at most the batches in flight and
   its re-run embeds only what is missing; the collection changes only in the one
   ``Collection.apply`` at the end, as with the local engine.

Every node needs catalens and the model; image paths must be readable where tasks run (a
shared filesystem or URLs).
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
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

__all__ = ["EmbedderFactory", "FetcherFactory", "RayEngine", "import_ray"]

EmbedderFactory = Callable[[], Embedder]
"""Loads the collection's model in an actor (pickled to the cluster: no open handles)."""
FetcherFactory = Callable[[], ImageFetcher]
"""Makes the fetcher a task reads images with (the operator's, or the guarded one)."""

Batch = dict[str, NDArray[Any]]


def import_ray() -> ModuleType:
    """``ray`` with ``ray.data``, or a one-line install hint."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise missing_extra("ray", "the ray ingest engine", exc.name) from exc
    return ray


@dataclass
class RayEngine:
    """Loads and embeds an ingest's images on Ray (see the module docstring)."""

    embedder_factory: EmbedderFactory
    fetcher_factory: FetcherFactory
    address: str | None = None
    """The cluster to join (``ray.init(address=...)``); ``None`` starts a local one, unless
    this process is already connected (then that connection is used and kept)."""
    chunk_size: int = 4096
    """Images identified and held in the object store at a time (bounds its memory)."""
    identify_batch: int = 64
    """Images per identify task (mostly hashing: cheap per image)."""
    decode_batch: int = 16
    """Images per decode task."""
    actors: int | None = None
    """Embedding actors; default one per GPU, else one per two CPUs."""

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
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # the CLI draws its own bars
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        try:
            run = _Run(self, ray, ingestor, report, preprocessing, len(tasks))
            ingestor.progress("embed", 0, len(tasks))
            for start in range(0, len(tasks), self.chunk_size):
                yield from run.chunk(list(enumerate(tasks[start : start + self.chunk_size])))
            ingestor.progress("embed", len(tasks), len(tasks))
        finally:
            if started_here:
                ray.shutdown()

    def embed_compute(self, ray: ModuleType) -> dict[str, Any]:
        """The actor pool's ``map_batches`` arguments for this cluster."""
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            size = self.actors or gpus
            return {"compute": ray.data.ActorPoolStrategy(size=size), "num_gpus": 1}
        size = self.actors or max(1, int(resources.get("CPU", 1)) // 2)
        return {"compute": ray.data.ActorPoolStrategy(size=size), "num_cpus": 1}


class _Run:
    """One ingest's state on the driver across its chunks."""

    def __init__(
        self,
        engine: RayEngine,
        ray: ModuleType,
        ingestor: Ingestor,
        report: IngestReport,
        preprocessing: Preprocessing,
        total: int,
    ) -> None:
        self.engine, self.ray, self.ingestor, self.report = engine, ray, ingestor, report
        self.preprocessing = preprocessing
        self.total = total
        self.done = 0

    def chunk(self, numbered: list[tuple[int, ImageTask]]) -> Iterator[LoadedImage]:
        engine, ingestor = self.engine, self.ingestor
        rows = [{"i": i, "task": pickle.dumps(task)} for i, task in numbered]
        identified = (
            self.ray.data.from_items(rows)
            .map_batches(
                _identify,
                fn_kwargs={
                    "fetcher_factory": engine.fetcher_factory,
                    "revalidate": ingestor.revalidate_urls,
                },
                batch_size=engine.identify_batch,
                batch_format="numpy",
            )
            .materialize()
        )
        found: dict[int, LoadedImage] = {}
        needs_vector: dict[int, str] = {}
        by_index = dict(numbered)
        columns = ["i", "hash", "size", "mtime", "error", "has_bytes"]
        for batch in identified.select_columns(columns).iter_batches(batch_format="numpy"):
            for i, digest, size, mtime, error, has_bytes in zip(
                *(batch[c] for c in columns), strict=True
            ):
                task = by_index[int(i)]
                if error:
                    found[int(i)] = LoadedImage(task, error=str(error))
                    continue
                found[int(i)] = LoadedImage(
                    task, str(digest), None, _optional(size), _optional(mtime)
                )
                if has_bytes:
                    needs_vector[int(i)] = str(digest)
        known = ingestor.collection.ledger.known_hashes(needs_vector.values())
        first: dict[str, int] = {}
        for i, digest in needs_vector.items():
            if digest not in known:
                first.setdefault(digest, i)
        waiting = Counter(digest for digest in needs_vector.values() if digest in first)
        self.done += len(numbered) - sum(waiting.values())
        self.ingestor.progress("embed", self.done, self.total)
        failed = self._embed(identified, sorted(first.values()), waiting) if first else {}
        del identified  # frees the chunk's bytes in the object store
        for i, loaded in sorted(found.items()):
            digest = loaded.content_hash
            if digest in failed:
                yield LoadedImage(loaded.task, error=failed[digest])
            elif digest is not None and first.get(digest) == i:
                yield replace(loaded, embedded=True)  # the others reuse its vector
            else:
                yield loaded

    def _embed(self, identified: Any, chosen: list[int], waiting: Counter[str]) -> dict[str, str]:
        """Decode and embed the rows ``chosen`` (one per new hash); save their vectors as they
        come; the hashes whose bytes could not be decoded, with why."""
        engine, ingestor = self.engine, self.ingestor
        identity = ingestor.embedder.identity
        vectors = identified.map_batches(
            _decode,
            fn_kwargs={
                "chosen": np.asarray(chosen, dtype=np.int64),
                "preprocessing": self.preprocessing,
                "limits": ingestor.limits,
                "draft_size": self.preprocessing.draft_size(),
            },
            batch_size=engine.decode_batch,
            batch_format="numpy",
            # Half a CPU: decoding is not fused into the actors, so it overlaps with the model.
            num_cpus=0.5,
        ).map_batches(
            _EmbedBatches,
            fn_constructor_kwargs={"factory": engine.embedder_factory, "identity": identity},
            batch_size=ingestor.batch_size,
            batch_format="numpy",
            **engine.embed_compute(self.ray),
        )
        failed: dict[str, str] = {}
        for batch in vectors.iter_batches(batch_format="numpy", batch_size=None):
            ok = batch["error"] == ""
            hashes = [str(h) for h in batch["hash"][ok]]
            if hashes:
                ingestor.collection.ledger.save_vectors(hashes, batch["vector"][ok])
                self.report.images_embedded += len(hashes)
            for digest, error in zip(batch["hash"][~ok], batch["error"][~ok], strict=True):
                failed[str(digest)] = str(error)
            self.done += sum(waiting[str(h)] for h in batch["hash"])
            ingestor.progress("embed", self.done, self.total)
        return failed


def _optional(value: Any) -> int | None:
    return None if int(value) < 0 else int(value)


# -- what runs on the cluster -------------------------------------------------------------


def _identify(batch: Batch, *, fetcher_factory: FetcherFactory, revalidate: bool) -> Batch:
    """Task: each image's content hash (or why it failed), and its bytes when new."""
    out: dict[str, list[Any]] = {
        k: [] for k in ("i", "ref", "hash", "size", "mtime", "error", "has_bytes", "bytes")
    }
    with fetcher_factory() as fetcher:
        for i, pickled in zip(batch["i"], batch["task"], strict=True):
            task: ImageTask = pickle.loads(pickled)
            loaded, data = read_image(task, fetcher, revalidate=revalidate)
            out["i"].append(int(i))
            out["ref"].append(task.ref)
            out["hash"].append(loaded.content_hash or "")
            out["size"].append(-1 if loaded.file_size is None else loaded.file_size)
            out["mtime"].append(-1 if loaded.file_mtime_ns is None else loaded.file_mtime_ns)
            out["error"].append(loaded.error or "")
            out["has_bytes"].append(data is not None)
            out["bytes"].append(data or b"")
    return {
        "i": np.asarray(out["i"], dtype=np.int64),
        "ref": np.asarray(out["ref"], dtype=object),
        "hash": np.asarray(out["hash"], dtype=object),
        "size": np.asarray(out["size"], dtype=np.int64),
        "mtime": np.asarray(out["mtime"], dtype=np.int64),
        "error": np.asarray(out["error"], dtype=object),
        "has_bytes": np.asarray(out["has_bytes"], dtype=bool),
        "bytes": np.asarray(out["bytes"], dtype=object),
    }


def _decode(
    batch: Batch,
    *,
    chosen: NDArray[np.int64],
    preprocessing: Preprocessing,
    limits: ImageLimits,
    draft_size: tuple[int, int],
) -> Batch:
    """Task: the model input of each chosen row (zeros and the reason when undecodable)."""
    keep = np.isin(batch["i"], chosen)
    refs, hashes, blobs = batch["ref"][keep], batch["hash"][keep], batch["bytes"][keep]
    pixels = np.zeros((len(refs), *preprocessing.input_shape), dtype=np.float32)
    errors: list[str] = []
    for row, (ref, data) in enumerate(zip(refs, blobs, strict=True)):
        try:
            pixels[row] = image_pixels(
                bytes(data), str(ref), preprocessing, limits=limits, draft_size=draft_size
            )
            errors.append("")
        except CatalensError as exc:  # one bad image is recorded; anything else stops the run
            errors.append(str(exc))
    return {
        "hash": np.asarray(hashes, dtype=object),
        "pixels": pixels,
        "error": np.asarray(errors, dtype=object),
    }


class _EmbedBatches:
    """Actor: holds the model and embeds batches of model inputs."""

    def __init__(self, factory: EmbedderFactory, identity: ModelIdentity) -> None:
        self._embedder = factory()
        if self._embedder.identity.key() != identity.key():
            raise ModelMismatchError(
                f"a Ray worker loaded {self._embedder.identity.name} "
                f"({self._embedder.identity.revision}), not the collection's model "
                f"{identity.name} ({identity.revision})"
            )
        self._dim = identity.dim

    def __call__(self, batch: Batch) -> Batch:
        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self._dim), dtype=np.float32)
        if ok.any():
            vectors[ok] = self._embedder.embed_pixels(np.asarray(batch["pixels"][ok]))
        return {"hash": batch["hash"], "error": batch["error"], "vector": vectors}
