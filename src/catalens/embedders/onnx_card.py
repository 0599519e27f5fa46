"""An ONNX image encoder described by a ``model.json`` card, run with onnxruntime.

The card names the file, its input and output tensors, the embedding size and the exact
preprocessing (see ``docs/models.md``), so any exported image encoder works without code.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from catalens.embedders.base import BatchedImageEmbedder
from catalens.embedders.preprocess import CARD_KEYS, Preprocessing
from catalens.errors import ModelError
from catalens.types import ModelIdentity

CARD_FILE: Final = "model.json"
REQUIRED_KEYS: Final = ("name", "format", "file", "input", "output", "dim", *CARD_KEYS)


def file_digest(*paths: Path, length: int = 16) -> str:
    """Short sha256 over the bytes of ``paths`` (in the order given)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:length]


WEIGHT_SUFFIXES: Final = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def weights_revision(directory: Path) -> str:
    """The revision of a local model directory: a digest of its weights files."""
    weights = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise ModelError(f"{directory}: no weights file (*.safetensors, *.bin) in this directory")
    return file_digest(*weights)


def weight_files(model_path: Path) -> list[Path]:
    """The ONNX file and, when weights were exported beside it, ``<file>.data``."""
    external = model_path.with_name(model_path.name + ".data")
    return [model_path, external] if external.is_file() else [model_path]


def read_card(path: Path) -> dict[str, Any]:
    """Read and check a ``model.json``; every problem is a ``ModelError`` naming it."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no model card here") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: model card is not readable JSON ({exc})") from exc
    if not isinstance(card, dict):
        raise ModelError(f"{path}: model card must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in card]
    if missing:
        raise ModelError(f"{path}: model card lacks required key(s): {', '.join(missing)}")
    if card["format"] != "onnx":
        raise ModelError(f"{path}: model card format {card['format']!r} is not 'onnx'")
    if card.get("text_tower") is not None:
        raise ModelError(f"{path}: text towers in model cards are not supported yet")
    for key in ("name", "file", "input", "output"):
        if not isinstance(card[key], str) or not card[key]:
            raise ModelError(f"{path}: model card key {key!r} must be a non-empty string")
    if not isinstance(card["dim"], int) or isinstance(card["dim"], bool) or card["dim"] < 1:
        raise ModelError(f"{path}: model card key 'dim' must be a positive integer")
    return card


def _providers(device: str) -> list[str]:
    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device == "auto":
        return (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        )
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if not cuda:
            raise ModelError(
                "device 'cuda' asked for, but onnxruntime has no CUDA provider "
                "(pip install onnxruntime-gpu)"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ModelError(f"unknown device {device!r}: use auto, cpu or cuda")


def default_intra_op_threads() -> int:
    """Inference threads: every core. The ingest's decoders overlap with inference in the
    gaps between batches."""
    return os.cpu_count() or 1


def open_session(
    model_path: Path, *, device: str = "auto", intra_op_threads: int | None = None
) -> ort.InferenceSession:
    """One warm onnxruntime session; load failures become a one-line ``ModelError``.

    Callers run it one call at a time (a lock per session): each run already uses every
    core, and concurrent requests running it at once only contend for the cores and caches
    (32 concurrent searches: about 8% more throughput with the lock). Requests queue instead.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or default_intra_op_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Threads spin briefly between a run's parallel sections instead of sleeping: on an idle
    # 2-core box that cut ViT-B/32's one-image latency from 88 to 69 ms (fp32) and 53 to
    # 43 ms (int8), and sped up ingest by 5-13%; a box shared with other busy work loses
    # 5-15% with it (docs/benchmarks.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    # ... but not past the end of a run: a query's own work after its forward (search,
    # query log) and the next query's decode need the cores the idle threads would spin
    # on (issue 14: the mobilenet query path's p50 over its forward, 1.57 -> 1.32 at load 8).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        return ort.InferenceSession(
            str(model_path), sess_options=options, providers=_providers(device)
        )
    except ModelError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model_path}: onnxruntime cannot load it ({first})") from exc


class OnnxEmbedder(BatchedImageEmbedder):
    """An image embedder from an ONNX file and its card; one warm session, thread-safe."""

    def __init__(
        self,
        model_path: Path,
        *,
        name: str,
        input_name: str,
        output_name: str,
        dim: int,
        preprocessing: Preprocessing,
        device: str = "auto",
        batch_size: int = 32,
        intra_op_threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ModelError("batch_size must be >= 1")
        if not model_path.is_file():
            raise ModelError(f"{model_path}: ONNX model file not found")
        self._preprocessing = preprocessing
        self._input = input_name
        self._output = output_name
        self._session = open_session(model_path, device=device, intra_op_threads=intra_op_threads)
        self._run_lock = threading.Lock()
        inputs = {node.name: node for node in self._session.get_inputs()}
        outputs = [node.name for node in self._session.get_outputs()]
        if input_name not in inputs:
            raise ModelError(
                f"{model_path}: no input named {input_name!r} (inputs: {', '.join(inputs)})"
            )
        if output_name not in outputs:
            raise ModelError(
                f"{model_path}: no output named {output_name!r} (outputs: {', '.join(outputs)})"
            )
        shape = list(inputs[input_name].shape)
        fixed_batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        if fixed_batch is not None and fixed_batch != 1:
            raise ModelError(
                f"{model_path}: input {input_name!r} has a fixed batch size of {fixed_batch}; "
                "export it with a dynamic batch axis"
            )
        self._batch_size = 1 if fixed_batch == 1 else batch_size
        expected = (1, *preprocessing.input_shape)
        if len(shape) != 4 or any(
            isinstance(have, int) and have > 0 and have != want
            for have, want in zip(shape[1:], expected[1:], strict=True)
        ):
            raise ModelError(
                f"{model_path}: input {input_name!r} has shape {shape}, but the card's "
                f"preprocessing makes {list(expected[1:])} per image"
            )
        self._device = (
            "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        )
        probe = self._embed_chunk(np.zeros(expected, dtype=np.float32))
        if probe.shape != (1, dim):
            raise ModelError(
                f"{model_path}: output {output_name!r} gives {probe.shape[1:]} per image, "
                f"the card says dim {dim}"
            )
        self._identity = ModelIdentity(
            name=name,
            revision=file_digest(*weight_files(model_path)),
            dim=dim,
            preprocessing=preprocessing.to_dict(),
            has_text_tower=False,
        )

    @classmethod
    def from_dir(
        cls,
        path: str | os.PathLike[str],
        *,
        device: str = "auto",
        batch_size: int = 32,
        intra_op_threads: int | None = None,
    ) -> OnnxEmbedder:
        """Load the model that ``path/model.json`` describes (``path`` may be the card)."""
        where = Path(path)
        card_path = where if where.suffix == ".json" else where / CARD_FILE
        card = read_card(card_path)
        return cls.from_card(
            card,
            base_dir=card_path.parent,
            device=device,
            batch_size=batch_size,
            intra_op_threads=intra_op_threads,
        )

    @classmethod
    def from_card(
        cls,
        card: Mapping[str, Any],
        *,
        base_dir: Path,
        device: str = "auto",
        batch_size: int = 32,
        intra_op_threads: int | None = None,
    ) -> OnnxEmbedder:
        preprocessing = Preprocessing.from_card(card)
        model_path = base_dir / str(card["file"])
        if not model_path.is_file():
            raise ModelError(f"{base_dir / CARD_FILE}: the model file {card['file']!r} is missing")
        return cls(
            model_path,
            name=str(card["name"]),
            input_name=str(card["input"]),
            output_name=str(card["output"]),
            dim=int(card["dim"]),
            preprocessing=preprocessing,
            device=device,
            batch_size=batch_size,
            intra_op_threads=intra_op_threads,
        )

    def _embed_chunk(self, chunk: NDArray[np.float32]) -> NDArray[np.float32]:
        try:
            with self._run_lock:  # see open_session: one run at a time per session
                (out,) = self._session.run(
                    [self._output], {self._input: np.ascontiguousarray(chunk)}
                )
        except Exception as exc:
            raise ModelError(f"onnxruntime failed to run {self._identity_name()}: {exc}") from exc
        array = np.asarray(out, dtype=np.float32)
        # Pooled features exported as (n, d, 1, 1) are fine too.
        return array.reshape(array.shape[0], -1) if array.ndim > 2 else array

    def _identity_name(self) -> str:
        identity: ModelIdentity | None = getattr(self, "_identity", None)
        return identity.name if identity is not None else "the model"
