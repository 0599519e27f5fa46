"""ingest/decode.py: every oddity a catalog throws at us, generated in-test with Pillow."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from catalens.errors import ImageDecodeError, ImageError, ImageTooLargeError
from catalens.ingest.decode import (
    ImageLimits,
    check_image_bytes,
    content_hash,
    decode_image,
    load_image,
    read_image_file,
    sniff_format,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
    )


def grey1_png(width: int, height: int, *, full_data: bool) -> bytes:
    """A 1-bit greyscale PNG of ``width`` x ``height``: all-black data, or a header-only lie."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    if full_data:
        row = b"\x00" * (1 + (width + 7) // 8)
        idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    else:
        idat = compressor.compress(b"\x00" * 16) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def assert_plain_rgb(img: Image.Image) -> None:
    """Fully loaded, 8-bit RGB, detached from any file."""
    assert img.mode == "RGB"
    assert getattr(img, "fp", None) is None
    img.getpixel((0, 0))  # would raise if pixel access needed a file


# --- formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt", "params"),
    [
        ("a.jpg", "JPEG", {"quality": 95}),
        ("a.jfif", "JPEG", {"quality": 95}),
        ("a.png", "PNG", {}),
        ("a.gif", "GIF", {}),
        ("a.webp", "WEBP", {"lossless": True}),
        ("a.bmp", "BMP", {}),
        ("a.tiff", "TIFF", {}),
    ],
)
def test_each_format_decodes_to_rgb(
    tmp_path: Path, name: str, fmt: str, params: dict[str, object]
) -> None:
    path = write(tmp_path, name, encode(Image.new("RGB", (24, 16), RED), fmt, **params))
    img = load_image(path)
    assert_plain_rgb(img)
    assert img.size == (24, 16)
    assert close_to(img.getpixel((5, 5)), RED)  # type: ignore[arg-type]


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = load_image(write(tmp_path, "anim.gif", buffer.getvalue()))
    assert_plain_rgb(img)
    assert close_to(img.getpixel((5, 5)), RED)  # type: ignore[arg-type]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    raw = Image.new("RGB", (40, 20), RED)
    exif = raw.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = write(tmp_path, "rotated.jpg", encode(raw, "JPEG", exif=exif.tobytes()))
    img = load_image(path)
    assert img.size == (20, 40)
    assert_plain_rgb(img)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = write(
        tmp_path, "cmyk.jpg", encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")
    )
    img = load_image(path)
    assert_plain_rgb(img)
    assert close_to(img.getpixel((8, 8)), RED, tolerance=20)  # type: ignore[arg-type]


def test_palette_png_transparency_becomes_white(tmp_path: Path) -> None:
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 1)
    path = write(tmp_path, "pal.png", encode(img, "PNG", transparency=1))
    out = load_image(path)
    assert_plain_rgb(out)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((4, 4)) == RED


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode.startswith("I;16")
    out = load_image(write(tmp_path, "deep.png", encode(source, "PNG")))
    assert_plain_rgb(out)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (128, 128, 128)
    assert out.getpixel((0, 1)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (3, 3, 3)  # 1000 >> 8, not clipped to 255


def test_32bit_int_image_is_scaled() -> None:
    source = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert source.mode == "I"
    out = decode_image(encode(source, "TIFF"), source="int.tiff")
    assert out.getpixel((1, 0)) == (255, 255, 255)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 0, 0, 128))
    out = load_image(write(tmp_path, "alpha.png", encode(img, "PNG")))
    assert_plain_rgb(out)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert close_to(out.getpixel((1, 0)), (127, 127, 127), tolerance=2)  # type: ignore[arg-type]
    assert out.getpixel((2, 2)) == RED


def test_la_image(tmp_path: Path) -> None:
    img = Image.new("LA", (4, 4), (0, 255))
    img.putpixel((0, 0), (0, 0))
    out = load_image(write(tmp_path, "la.png", encode(img, "PNG")))
    assert_plain_rgb(out)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["L", "1", "RGBA", "P"])
def test_other_modes_become_rgb(mode: str) -> None:
    out = decode_image(encode(Image.new(mode, (5, 5)), "PNG"), source="m.png")
    assert_plain_rgb(out)


# --- draft (fast JPEG path) ------------------------------------------------------------------


def test_draft_size_decodes_smaller_but_not_below_target() -> None:
    data = encode(Image.new("RGB", (2000, 1000), RED), "JPEG")
    img = decode_image(data, source="big.jpg", draft_size=(300, 300))
    assert img.size == (1000, 500)
    assert_plain_rgb(img)


def test_draft_size_accounts_for_exif_rotation() -> None:
    raw = Image.new("RGB", (2000, 800), RED)
    exif = raw.getexif()
    exif[0x0112] = 6
    data = encode(raw, "JPEG", exif=exif.tobytes())
    img = decode_image(data, source="r.jpg", draft_size=(350, 900))
    # displayed 800x2000; stored scale 1/2 gives 400x1000 which still covers 350x900
    assert img.size == (400, 1000)


def test_draft_size_is_ignored_for_non_jpeg() -> None:
    img = decode_image(encode(Image.new("RGB", (800, 800)), "PNG"), source="p", draft_size=(10, 10))
    assert img.size == (800, 800)


def test_reduce_makes_any_format_small_by_a_whole_factor_but_not_below_target() -> None:
    data = encode(Image.new("RGB", (3200, 2400), RED), "PNG")
    img = decode_image(data, source="p", draft_size=(600, 600), reduce=True)
    assert img.size == (800, 600)  # reduced by 4: 5 would leave 480 < 600 rows
    assert img.getpixel((400, 300)) == RED
    small = encode(Image.new("RGB", (800, 600), RED), "PNG")  # small images decode in full
    assert decode_image(small, source="s", draft_size=(150, 150), reduce=True).size == (800, 600)
    assert_plain_rgb(img)


# --- broken files ----------------------------------------------------------------------------


def _noise(size: tuple[int, int] = (64, 64)) -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize(("name", "fmt"), [("cut.png", "PNG"), ("cut.jpg", "JPEG")])
def test_truncated_image(tmp_path: Path, name: str, fmt: str) -> None:
    data = encode(_noise(), fmt)
    path = write(tmp_path, name, data[: len(data) // 2])
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert str(info.value) == f"{path}: truncated image file"
    assert info.value.source == str(path)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.jpg", b"")
    with pytest.raises(ImageDecodeError, match="empty file") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_random_bytes_named_jpg(tmp_path: Path) -> None:
    path = write(tmp_path, "random.jpg", np.random.default_rng(1).bytes(4096))
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert str(info.value) == f"{path}: not an image (unrecognised format)"


def test_text_file(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.png", b"BM this is text, not a bitmap\n" * 4)
    with pytest.raises(ImageDecodeError, match="not an image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_corrupt_data_behind_valid_magic() -> None:
    header = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", b"not zlib data at all" * 8)
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, source="shop/x.png")
    assert str(info.value).startswith("shop/x.png: ")
    assert info.value.reason.startswith("corrupt png image")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


@pytest.mark.timeout(5)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # no writer: opening it for reading would hang
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(fifo)


# --- limits ----------------------------------------------------------------------------------


def test_byte_limit_checked_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "big.png", encode(_noise(), "PNG"))
    limits = ImageLimits(max_bytes=1000)
    with pytest.raises(ImageTooLargeError, match="over the limit of 1000 bytes") as info:
        load_image(path, limits=limits)
    assert str(path) in str(info.value)
    with pytest.raises(ImageTooLargeError):
        decode_image(path.read_bytes(), source="mem", limits=limits)
    with pytest.raises(ImageTooLargeError):
        read_image_file(path, max_bytes=1000)


def test_pixel_limit_on_a_small_real_image() -> None:
    data = encode(Image.new("RGB", (2, 2)), "PNG")
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, source="tiny.png", limits=ImageLimits(max_pixels=3))
    assert str(info.value) == "tiny.png: 2x2 is 4 pixels, over the limit of 3"


def test_pixel_limit_from_header_before_decoding(tmp_path: Path) -> None:
    # 8000x8000 = 64 MP: over our default 50 MP, under Pillow's own 89 MP warning.
    data = grey1_png(8000, 8000, full_data=True)
    assert len(data) < 50_000
    path = write(tmp_path, "wide.png", data)
    with pytest.raises(ImageTooLargeError, match="8000x8000 is 64000000 pixels") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_real_decompression_bomb(tmp_path: Path) -> None:
    data = grey1_png(20000, 20000, full_data=True)  # 400 MP of black in ~50 kB
    assert len(data) < 100_000
    before = Image.MAX_IMAGE_PIXELS
    path = write(tmp_path, "bomb.png", data)
    with pytest.raises(ImageTooLargeError) as info:
        load_image(path, limits=ImageLimits(max_pixels=10**12))
    assert str(path) in str(info.value)
    assert "decompression bomb" in info.value.reason
    assert before == Image.MAX_IMAGE_PIXELS


def test_lying_header_hits_pixel_limit() -> None:
    with pytest.raises(ImageTooLargeError, match="9000x9000 is 81000000 pixels"):
        decode_image(grey1_png(9000, 9000, full_data=False), source="liar.png")


def test_pillow_bomb_warning_becomes_error_not_warning() -> None:
    # 10000x10000 is between Pillow's warning (89 MP) and error (179 MP) thresholds; our own
    # limit is raised above it, so only Pillow's warning path can refuse it.
    data = grey1_png(10_000, 10_000, full_data=False)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        decode_image(data, source="warn.png", limits=ImageLimits(max_pixels=10**9))


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ImageLimits(max_pixels=0)


# --- small helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp")],
)
def test_sniff_format(fmt: str, expected: str) -> None:
    assert sniff_format(encode(Image.new("RGB", (2, 2)), fmt)) == expected


def test_sniff_format_tiff_and_unknown() -> None:
    assert sniff_format(encode(Image.new("RGB", (2, 2)), "TIFF")) == "tiff"
    assert sniff_format(b"MM\x00*rest") == "tiff"
    assert sniff_format(b"") is None
    assert sniff_format(b"BMP is a format") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert sniff_format(b"<html>") is None


def test_check_image_bytes() -> None:
    assert check_image_bytes(b"GIF89a....", source="s", max_bytes=100) == "gif"
    with pytest.raises(ImageTooLargeError):
        check_image_bytes(b"GIF89a....", source="s", max_bytes=5)


def test_content_hash() -> None:
    assert content_hash(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# --- phone photos: HEIC/HEIF (pillow-heif) and AVIF (Pillow's own plugin) ---------------------

PHONE_FORMATS = [("photo.heic", "HEIF", "heif"), ("photo.avif", "AVIF", "avif")]


def _lying_size(data: bytes, width: int, height: int) -> bytes:
    """The same file with its ``ispe`` (image spatial extents) box claiming another size."""
    at = data.index(b"ispe") + 8  # past the box type and its version/flags word
    return data[:at] + width.to_bytes(4, "big") + height.to_bytes(4, "big") + data[at + 8 :]


@pytest.mark.parametrize(("name", "fmt", "sniffed"), PHONE_FORMATS)
def test_phone_photo_formats_decode_to_rgb(
    tmp_path: Path, name: str, fmt: str, sniffed: str
) -> None:
    picture = Image.new("RGB", (48, 32), RED)
    picture.paste(BLUE, (24, 0, 48, 32))
    data = encode(picture, fmt, quality=90)
    assert sniff_format(data) == sniffed
    img = load_image(write(tmp_path, name, data))
    assert_plain_rgb(img)
    assert img.size == (48, 32)
    assert close_to(img.getpixel((5, 5)), RED, tolerance=24)  # type: ignore[arg-type]
    assert close_to(img.getpixel((40, 20)), BLUE, tolerance=24)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "fmt", "sniffed"), PHONE_FORMATS)
def test_phone_photo_formats_keep_the_pixel_limit(name: str, fmt: str, sniffed: str) -> None:
    data = encode(Image.new("RGB", (64, 64), RED), fmt, quality=50)
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data, source=name, limits=ImageLimits(max_pixels=4000))
    assert str(info.value) == f"{name}: 64x64 is 4096 pixels, over the limit of 4000"
    # A small file whose header claims 81 MP is refused from the header, before decoding.
    liar = _lying_size(data, 9000, 9000)
    assert len(liar) < 2000
    with pytest.raises(ImageTooLargeError, match="9000x9000 is 81000000 pixels"):
        decode_image(liar, source=name)
    with pytest.raises(ImageTooLargeError, match="over the limit of 100 bytes"):
        decode_image(data, source=name, limits=ImageLimits(max_bytes=100))


def test_heif_and_avif_brands_are_sniffed_from_the_ftyp_box() -> None:
    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
        return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\x00" * 16

    assert sniff_format(ftyp(b"heic", b"mif1", b"heic")) == "heif"
    assert sniff_format(ftyp(b"mif1", b"mif1", b"avif")) == "avif"
    assert sniff_format(ftyp(b"isom", b"isom", b"mp41")) is None  # an MP4 video
    assert sniff_format(ftyp(b"avif")[:12]) is None
