"""Re-encode an image from its decoded pixels, so that nothing but pixels leaves the server.

The image route shows collection images to anyone; the bytes behind them (a local file an
upsert named, a confirmed photo someone sent) may carry more than an image: text after the
end marker, metadata chunks, a polyglot. Serving a fresh encoding of the decoded pixels,
made by ``decode_image`` with its limits, shows the picture and nothing else.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from catalens.ingest.decode import ImageLimits, PixelBudget, check_image_bytes, decode_image

__all__ = ["LOSSLESS_FORMATS", "MAX_SIDE", "EncodedImage", "reencode_image"]

MAX_SIDE = 1600
"""The longest side of a re-encoded image: enough for any page that shows it."""
LOSSLESS_FORMATS = frozenset({"png", "gif", "bmp", "tiff"})
"""Sources re-encoded as PNG (drawings and packshots keep exact pixels); the rest as JPEG."""
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class EncodedImage:
    """A fresh encoding of an image's pixels, and its media type."""

    data: bytes
    media_type: str


def reencode_image(
    data: bytes,
    *,
    source: str,
    limits: ImageLimits,
    budget: PixelBudget | None = None,
    max_side: int = MAX_SIDE,
) -> EncodedImage:
    """``data`` decoded (safely, within ``limits`` and ``budget``), made at most ``max_side``
    pixels on its longest side, and encoded anew: PNG for lossless sources, else JPEG.

    Raises what ``decode_image`` raises (``ImageError`` subclasses, ``BusyError``)."""
    if max_side < 1:
        raise ValueError(f"max_side must be positive, got {max_side}")
    fmt = check_image_bytes(data, source=source, max_bytes=limits.max_bytes)
    decoded = decode_image(
        data,
        source=source,
        limits=limits,
        draft_size=(max_side, max_side),
        budget=budget,
        reduce=True,
    )
    decoded.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    # A new image from the raw pixels: decode_image's result keeps the source's ``info``
    # (an ICC profile, comments), which Pillow would write back into the new file.
    pixels = Image.frombytes("RGB", decoded.size, decoded.tobytes())
    buffer = io.BytesIO()
    if fmt in LOSSLESS_FORMATS:
        pixels.save(buffer, format="PNG", optimize=False)
        return EncodedImage(buffer.getvalue(), "image/png")
    pixels.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
    return EncodedImage(buffer.getvalue(), "image/jpeg")
