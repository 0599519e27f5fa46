"""CLIP through Hugging Face ``transformers``: image and text towers in one space.

Loads by hub id (``openai/clip-vit-base-patch32``) or from a ``save_pretrained`` directory.
Preprocessing is read from the model's image-processor config and run by ``Preprocessing``
(numpy + Pillow), so the ingest pipeline can run it in worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from catalens.embedders.base import BatchedImageEmbedder, Vectors, l2_normalize
from catalens.embedders.onnx_card import weights_revision
from catalens.embedders.preprocess import Preprocessing, interpolation_name
from catalens.embedders.torch_device import resolve_device
from catalens.errors import ModelError, missing_extra
from catalens.types import ModelIdentity

try:
    import torch
    import transformers
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise missing_extra("clip", "CLIP models (torch and transformers)", exc.name) from exc

DEFAULT_CLIP: Final = "openai/clip-vit-base-patch32"


def _image_processor_class() -> Any:
    # transformers 5 makes CLIPImageProcessor the torchvision backend and falls back to the
    # PIL one with a warning; ask for the PIL one directly where it exists.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def _size(size: Any, key: str) -> int | None:
    """A field of a transformers size (a dict in v4, a ``SizeDict`` in v5)."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def preprocessing_from_processor(processor: Any) -> Preprocessing:
    """The ``Preprocessing`` equivalent of a ``CLIPImageProcessor``'s settings."""
    shortest = _size(processor.size, "shortest_edge")
    height, width = _size(processor.size, "height"), _size(processor.size, "width")
    if shortest is not None:
        resize, side = "shorter_side", shortest
    elif height is not None and height == width:
        resize, side = "squash", height
    else:
        raise ModelError(f"unsupported CLIP resize setting {processor.size!r}")
    crop = side
    if getattr(processor, "do_center_crop", True):
        crop_h = _size(processor.crop_size, "height")
        crop_w = _size(processor.crop_size, "width")
        if crop_h is None or crop_h != crop_w:
            raise ModelError(f"unsupported CLIP crop size {processor.crop_size!r}")
        crop = crop_h
    normalize = getattr(processor, "do_normalize", True)
    rescale = getattr(processor, "do_rescale", True)
    return Preprocessing(
        resize_shorter_side=side,
        crop=crop,
        interpolation=interpolation_name(int(processor.resample)),
        scale=float(processor.rescale_factor) if rescale else 1.0,
        mean=tuple(processor.image_mean) if normalize else (0.0, 0.0, 0.0),
        std=tuple(processor.image_std) if normalize else (1.0, 1.0, 1.0),
        resize=resize,
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _features(output: Any) -> torch.Tensor:
    """transformers 4 returns the projected tensor, 5 a ModelOutput with it as pooler_output."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise ModelError("unexpected output from the CLIP model")
    return pooled


class ClipEmbedder(BatchedImageEmbedder):
    """A CLIP model: ``embed_pixels`` for images, ``embed_texts`` for words, one space."""

    def __init__(
        self,
        model_id_or_dir: str | os.PathLike[str] = DEFAULT_CLIP,
        *,
        device: str = "auto",
        batch_size: int = 32,
        local_files_only: bool = False,
        revision: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ModelError("batch_size must be >= 1")
        self._batch_size = batch_size
        self._device = resolve_device(device)
        source = os.fspath(model_id_or_dir)
        local = Path(source).is_dir()
        kwargs: dict[str, Any] = {"local_files_only": local_files_only}
        if revision is not None and not local:
            kwargs["revision"] = revision
        hf_logging: Any = transformers.utils.logging
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the library draws no progress bars
        try:
            model: Any = transformers.CLIPModel.from_pretrained(source, **kwargs)
            processor = _image_processor_class().from_pretrained(source, **kwargs)
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {_one_line(exc)}"
            if local:
                raise ModelError(f"could not load CLIP model from {source}: {detail}") from exc
            if local_files_only:
                raise ModelError(
                    f"could not load CLIP model {source!r}: not in the local Hugging Face cache "
                    f"and downloads are off ({detail})"
                ) from exc
            raise ModelError(
                f"could not load CLIP model {source!r} from the hub or the cache: {detail}"
            ) from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self._model = model.eval().to(self._device)
        self._preprocessing = preprocessing_from_processor(processor)
        config: Any = model.config
        image_size = int(config.vision_config.image_size)
        if self._preprocessing.crop != image_size:
            raise ModelError(
                f"{source}: the image processor crops to {self._preprocessing.crop} px, "
                f"the vision tower expects {image_size} px"
            )
        self._max_tokens = int(config.text_config.max_position_embeddings)
        if local:
            name = Path(source).resolve().name
            rev = weights_revision(Path(source))
        else:
            name = source
            commit = getattr(config, "_commit_hash", None)
            rev = str(commit) if commit else (revision or "unknown")
        self._identity = ModelIdentity(
            name=name,
            revision=rev,
            dim=int(config.projection_dim),
            preprocessing=self._preprocessing.to_dict(),
            has_text_tower=True,
        )

    def _embed_chunk(self, chunk: NDArray[np.float32]) -> NDArray[np.float32]:
        with torch.inference_mode():
            pixels = torch.from_numpy(chunk).to(self._device)
            out = self._model.get_image_features(pixel_values=pixels)
            features: NDArray[np.float32] = _features(out).float().cpu().numpy()
        return features

    def embed_texts(self, texts: Sequence[str]) -> Vectors:
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of strings, not one string")
        if not texts:
            return np.zeros((0, self._identity.dim), dtype=np.float32)
        parts: list[NDArray[np.float32]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self._batch_size):
                tokens = self._tokenizer(
                    list(texts[start : start + self._batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self._max_tokens,
                    return_tensors="pt",
                )
                tokens = {key: value.to(self._device) for key, value in tokens.items()}
                out = self._model.get_text_features(**tokens)
                parts.append(_features(out).float().cpu().numpy())
        return l2_normalize(np.concatenate(parts))
