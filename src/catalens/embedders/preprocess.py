"""Image preprocessing in plain numpy + Pillow, so the ingest pipeline can run it in threads.

One frozen ``Preprocessing`` value describes what a model expects (resize, crop, scale,
per-channel mean/std, tensor layout); it is recorded in the model identity next to the
vectors and is callable on a PIL image:

    resize    "shorter_side": shorter side -> ``resize_shorter_side``, aspect ratio kept
              (torchvision ``Resize(256)``, CLIP's ``shortest_edge``);
              "squash": the whole image -> ``resize_shorter_side`` x ``resize_shorter_side``
              (torchvision ``Resize((224, 224))``)
    crop      center crop ``crop`` x ``crop`` (a no-op after a squash to the same size)
    scale     pixel values (0..255) times ``scale``
    normalise ``(x - mean) / std`` per RGB channel
    layout    "NCHW" gives a CHW array, "NHWC" an HWC one (float32, C-contiguous)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from catalens.errors import ModelError

_RESAMPLE: Final[dict[str, Image.Resampling]] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_RESIZE_MODES: Final = ("shorter_side", "squash")
_LAYOUTS: Final = ("NCHW", "NHWC")
CARD_KEYS: Final = (
    "resize_shorter_side",
    "crop",
    "interpolation",
    "scale",
    "mean",
    "std",
)
"""Keys a model card must carry for its preprocessing (``layout`` and ``resize`` optional)."""


def interpolation_name(resample: int) -> str:
    """The name of a Pillow resampling filter code (``3`` -> ``"bicubic"``)."""
    for name, value in _RESAMPLE.items():
        if int(value) == int(resample):
            return name
    raise ModelError(f"unsupported resampling filter {resample!r}")


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    if isinstance(value, int | float):
        values = [float(value)] * 3
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = [float(v) for v in value]
        if len(values) == 1:
            values *= 3
    else:
        raise ModelError(f"invalid preprocessing: {what} must be a number or 3 numbers")
    if len(values) != 3:
        raise ModelError(f"invalid preprocessing: {what} needs 3 values (RGB), got {len(values)}")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input pixels; call it on an RGB image."""

    resize_shorter_side: int
    crop: int
    interpolation: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    resize: str = "shorter_side"
    """``"shorter_side"`` (keep aspect ratio) or ``"squash"`` (ignore it)."""
    _offset: NDArray[np.float32] = field(init=False, repr=False, compare=False)
    _factor: NDArray[np.float32] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mean = _triple(self.mean, "mean")
        std = _triple(self.std, "std")
        if self.resize_shorter_side < 1 or self.crop < 1:
            raise ModelError("invalid preprocessing: resize_shorter_side and crop must be >= 1")
        if self.crop > self.resize_shorter_side:
            raise ModelError(
                f"invalid preprocessing: crop {self.crop} is larger than the resized "
                f"image ({self.resize_shorter_side})"
            )
        if self.interpolation not in _RESAMPLE:
            raise ModelError(
                f"invalid preprocessing: interpolation {self.interpolation!r} is not one of "
                f"{', '.join(_RESAMPLE)}"
            )
        if self.layout not in _LAYOUTS:
            raise ModelError(f"invalid preprocessing: layout {self.layout!r} is not NCHW or NHWC")
        if self.resize not in _RESIZE_MODES:
            raise ModelError(
                f"invalid preprocessing: resize {self.resize!r} is not shorter_side or squash"
            )
        if any(s == 0.0 for s in std):
            raise ModelError("invalid preprocessing: std must not be 0")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "scale", float(self.scale))
        # (x * scale - mean) / std == x * (scale / std) - mean / std: one multiply-add.
        std_arr = np.asarray(std, dtype=np.float64)
        factor = (self.scale / std_arr).astype(np.float32)
        offset = (np.asarray(mean, dtype=np.float64) / std_arr).astype(np.float32)
        object.__setattr__(self, "_factor", factor)
        object.__setattr__(self, "_offset", offset)

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> Preprocessing:
        """Read the preprocessing fields of a ``model.json`` card (or of ``to_dict()``)."""
        missing = [key for key in CARD_KEYS if key not in card]
        if missing:
            raise ModelError(f"model card lacks preprocessing key(s): {', '.join(missing)}")
        try:
            return cls(
                resize_shorter_side=int(card["resize_shorter_side"]),
                crop=int(card["crop"]),
                interpolation=str(card["interpolation"]).lower(),
                scale=float(card["scale"]),
                mean=_triple(card["mean"], "mean"),
                std=_triple(card["std"], "std"),
                layout=str(card.get("layout", "NCHW")).upper(),
                resize=str(card.get("resize", "shorter_side")),
            )
        except (TypeError, ValueError) as exc:
            raise ModelError(f"invalid preprocessing in model card: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that ``from_card`` reads back; recorded in ``ModelIdentity``."""
        return {
            "resize": self.resize,
            "resize_shorter_side": self.resize_shorter_side,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
        }

    def draft_size(self, zooms: Sequence[float] = (1.0,)) -> tuple[int, int]:
        """The least size (each side) a JPEG may be decoded at, through Pillow's ``draft``,
        for this preprocessing: twice the crop, and enough that the smallest centre zoom
        still covers ``resize_shorter_side`` pixels. DCT-domain downscaling to that size
        costs nothing in quality and saves most of the decode of a phone photo."""
        zoom = max(1.0, *zooms) if zooms else 1.0
        side = max(2 * self.crop, math.ceil(self.resize_shorter_side * zoom))
        return side, side

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed image (no batch axis)."""
        if self.layout == "NCHW":
            return (3, self.crop, self.crop)
        return (self.crop, self.crop, 3)

    def resized(self, image: Image.Image) -> Image.Image:
        """The resize and center-crop steps only (an RGB image of ``crop`` x ``crop``)."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        resample = _RESAMPLE[self.interpolation]
        width, height = image.size
        if self.resize == "squash":
            new_w = new_h = self.resize_shorter_side
        elif width <= height:
            new_w = self.resize_shorter_side
            new_h = max(1, int(self.resize_shorter_side * height / width))
        else:
            new_h = self.resize_shorter_side
            new_w = max(1, int(self.resize_shorter_side * width / height))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample=resample)
        if (new_w, new_h) != (self.crop, self.crop):
            # torchvision's CenterCrop offsets.
            left = round((new_w - self.crop) / 2.0)
            top = round((new_h - self.crop) / 2.0)
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return image

    def __call__(self, image: Image.Image) -> NDArray[np.float32]:
        """One image -> a float32 array of ``input_shape``."""
        pixels = np.asarray(self.resized(image), dtype=np.float32)
        pixels = pixels * self._factor - self._offset
        if self.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        return np.ascontiguousarray(pixels, dtype=np.float32)
