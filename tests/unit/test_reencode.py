"""``reencode_image``: only decoded pixels come out, bounded in size, in a known format."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from catalens.errors import ImageDecodeError, ImageTooLargeError
from catalens.ingest.decode import ImageLimits
from catalens.ingest.reencode import reencode_image

SECRET = b"SECRET=hunter2"
LIMITS = ImageLimits()


def _encode(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gradient(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=-1).astype(np.uint8)


def test_png_metadata_and_trailing_bytes_are_dropped_pixels_kept() -> None:
    pixels = np.random.default_rng(5).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET.decode())
    data = _encode(pixels, "PNG", pnginfo=info, icc_profile=SECRET * 8) + SECRET
    image = reencode_image(data, source="t", limits=LIMITS)
    assert image.media_type == "image/png" and SECRET not in image.data
    with Image.open(io.BytesIO(image.data)) as out:
        assert out.format == "PNG" and "icc_profile" not in out.info and not out.text
        assert np.array_equal(np.asarray(out.convert("RGB")), pixels)


def test_jpeg_becomes_a_new_jpeg_without_exif_or_icc() -> None:
    pixels = _gradient(120, 160)
    exif = Image.Exif()
    exif[0x010E] = SECRET.decode()  # ImageDescription
    data = _encode(pixels, "JPEG", quality=95, exif=exif.tobytes(), icc_profile=SECRET * 8)
    image = reencode_image(data + SECRET, source="t", limits=LIMITS)
    assert image.media_type == "image/jpeg" and SECRET not in image.data
    with Image.open(io.BytesIO(image.data)) as out:
        assert out.format == "JPEG" and out.size == (160, 120)
        assert "icc_profile" not in out.info and "exif" not in out.info
        difference = np.abs(np.asarray(out, dtype=np.int16) - pixels.astype(np.int16))
    assert float(difference.mean()) < 3.0


def test_a_large_image_is_scaled_down_to_the_longest_side() -> None:
    data = _encode(_gradient(900, 3000), "PNG")
    image = reencode_image(data, source="t", limits=LIMITS, max_side=500)
    with Image.open(io.BytesIO(image.data)) as out:
        assert out.size == (500, 150)


def test_what_does_not_decode_raises_an_image_error() -> None:
    with pytest.raises(ImageDecodeError):
        reencode_image(b"GIF89a\n" + SECRET, source="t", limits=LIMITS)
    with pytest.raises(ImageTooLargeError):
        reencode_image(
            _encode(_gradient(100, 100), "PNG"), source="t", limits=ImageLimits(max_pixels=99)
        )
    with pytest.raises(ValueError):
        reencode_image(_encode(_gradient(4, 4), "PNG"), source="t", limits=LIMITS, max_side=0)
