"""A decoded RGB photo is Pillow's own decode, detached from the file without a copy."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from catalens.ingest.decode import decode_image


def _jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_a_decoded_jpeg_is_a_plain_image_of_pillows_pixels() -> None:
    data = _jpeg(120, 90)
    image = decode_image(data, source="photo")
    assert type(image) is Image.Image  # not the file's JpegImageFile
    assert image.mode == "RGB"
    assert image.size == (120, 90)
    with Image.open(io.BytesIO(data)) as reference:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))
    # Ours to change: drawing on it works and a second decode is unaffected.
    image.paste((255, 0, 0), (0, 0, 10, 10))
    again = decode_image(data, source="photo")
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(again)[0, 0].tolist() != [255, 0, 0]


def test_a_reduced_or_non_rgb_photo_is_still_rgb() -> None:
    grey = io.BytesIO()
    Image.new("L", (64, 48), 77).save(grey, format="PNG")
    image = decode_image(grey.getvalue(), source="grey")
    assert image.mode == "RGB"
    assert np.asarray(image)[0, 0].tolist() == [77, 77, 77]
    big = decode_image(_jpeg(2400, 1800), source="big", draft_size=(448, 448), reduce=True)
    assert type(big) is Image.Image
    assert big.mode == "RGB"
    assert min(big.size) >= 448
