"""CLIP on ONNX Runtime, from an export made by ``onnx_export`` (``catalens models export``).

The fp32 export has the same ``ModelIdentity`` as the torch model (its vectors agree to
about 1e-6), so one collection can be built with one runtime and searched with the other.
The int8 variant (spec suffix ``:int8``) has the revision suffix ``+int8``: its vectors
differ, so collections built with it are kept apart. ``clip_runtime.load_clip`` picks
between this and torch.

This module needs neither torch nor the model directory once the export exists: the
manifest carries the identity and the tokenizer is saved beside the ONNX files.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from catalens.embedders.base import BatchedImageEmbedder, Vectors, l2_normalize
from catalens.embedders.onnx_card import open_session
from catalens.embedders.onnx_files import INT8_SUFFIX, read_manifest
from catalens.embedders.preprocess import Preprocessing
from catalens.errors import ModelError, missing_extra
from catalens.types import ModelIdentity


class ClipOnnxEmbedder(BatchedImageEmbedder):
    """CLIP image and text towers as two onnxruntime sessions; thread-safe.

    The image session is opened (and warmed with one run) at load; the text session on the
    first ``embed_texts``, so an ingest never pays for the text tower.
    """

    def __init__(
        self,
        directory: Path,
        *,
        manifest: Mapping[str, Any] | None = None,
        variant: str = "fp32",
        device: str = "auto",
        batch_size: int = 32,
        intra_op_threads: int | None = None,
        tokenizer_dir: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ModelError("batch_size must be >= 1")
        manifest = manifest if manifest is not None else read_manifest(directory)
        if manifest is None:
            raise ModelError(f"{directory}: no ONNX export here (run `catalens models export`)")
        files = manifest["files"].get(variant)
        if files is None:
            raise ModelError(
                f"{directory}: the export has no {variant} variant "
                f"(run `catalens models export MODEL --quantize {variant}`)"
            )
        identity = ModelIdentity.from_dict(manifest["identity"])
        if variant != "fp32":
            identity = ModelIdentity(
                name=identity.name,
                revision=identity.revision + INT8_SUFFIX,
                dim=identity.dim,
                preprocessing=identity.preprocessing,
                has_text_tower=identity.has_text_tower,
            )
        self._identity = identity
        self._directory = directory
        self._tokenizer_dir = tokenizer_dir or directory
        self._files = dict(files)
        self._batch_size = batch_size
        self._max_tokens = int(manifest["max_tokens"])
        self._preprocessing = Preprocessing.from_card(identity.preprocessing)
        self._device_arg = device
        self._variant = variant
        self._threads = intra_op_threads
        self._image = open_session(
            directory / files["image"], device=device, intra_op_threads=intra_op_threads
        )
        self._device = "cuda" if self._image.get_providers()[0].startswith("CUDA") else "cpu"
        self._text: Any = None
        self._tokenizer: Any = None
        self._text_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one run at a time: see open_session
        # Warm up: the first run sizes the memory arena and finishes graph set-up.
        self._embed_chunk(np.zeros((1, *self._preprocessing.input_shape), dtype=np.float32))

    @property
    def directory(self) -> Path:
        return self._directory

    def with_threads(self, intra_op_threads: int) -> ClipOnnxEmbedder:
        """The same export and variant on an image session of its own with
        ``intra_op_threads`` threads (the query micro-batcher runs several side by side)."""
        return ClipOnnxEmbedder(
            self._directory,
            variant=self._variant,
            device=self._device_arg,
            batch_size=self._batch_size,
            intra_op_threads=intra_op_threads,
            tokenizer_dir=self._tokenizer_dir,
        )

    def _embed_chunk(self, chunk: NDArray[np.float32]) -> NDArray[np.float32]:
        try:
            with self._run_lock:
                (out,) = self._image.run(None, {"pixel_values": chunk})
        except Exception as exc:
            raise ModelError(f"onnxruntime failed to run {self._identity.name}: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not one string")
        if not texts:
            return np.zeros((0, self._identity.dim), dtype=np.float32)
        session, tokenizer = self._text_tower()
        parts = []
        for start in range(0, len(texts), self._batch_size):
            tokens = tokenizer(
                list(texts[start : start + self._batch_size]),
                padding=True,
                truncation=True,
                max_length=self._max_tokens,
                return_tensors="np",
            )
            feed = {
                "input_ids": np.asarray(tokens["input_ids"], dtype=np.int64),
                "attention_mask": np.asarray(tokens["attention_mask"], dtype=np.int64),
            }
            try:
                with self._run_lock:
                    (out,) = session.run(None, feed)
            except Exception as exc:
                raise ModelError(
                    f"onnxruntime failed to run the text tower of {self._identity.name}: {exc}"
                ) from exc
            parts.append(np.asarray(out, dtype=np.float32))
        return l2_normalize(np.concatenate(parts))

    def _text_tower(self) -> tuple[Any, Any]:
        with self._text_lock:
            if self._text is None:
                try:
                    import transformers
                except ImportError as exc:  # pragma: no cover - depends on the extras
                    raise missing_extra(
                        "clip", "CLIP text search (the tokenizer)", exc.name
                    ) from exc
                try:
                    self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                        str(self._tokenizer_dir)
                    )
                except Exception as exc:
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    raise ModelError(
                        f"{self._tokenizer_dir}: cannot load the exported tokenizer ({first})"
                    ) from exc
                self._text = open_session(
                    self._directory / self._files["text"],
                    device=self._device_arg,
                    intra_op_threads=self._threads,
                )
            return self._text, self._tokenizer
