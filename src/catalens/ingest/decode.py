"""Decode any catalog or query image safely into a fully loaded 8-bit RGB ``PIL.Image``.

Everything that can go wrong with one image becomes an ``ImageError`` naming the source and
the reason, so an ingest run records the image and moves on. Limits are checked before the
expensive work: the byte size before reading, the pixel count from the header before
decoding (a small file can claim gigapixels).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError, features

from catalens.errors import ImageDecodeError, ImageError, ImageTooLargeError

__all__ = [
    "ImageLimits",
    "check_image_bytes",
    "content_hash",
    "decode_image",
    "load_image",
    "read_image_file",
    "sniff_format",
]

# Our format names -> Pillow plugin ids. Opening with only the sniffed plugin keeps Pillow's
# long tail of rarely used (and rarely fuzzed) decoders out of reach of untrusted bytes.
_PIL_FORMATS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "heif": "HEIF",  # pillow-heif's plugin (phone photos: HEIC)
    "avif": "AVIF",  # Pillow's own plugin (11.3 and later, built with libavif)
}
# ISO base media files (HEIF, AVIF) start with an ``ftyp`` box: a major brand and a list of
# compatible brands. AVIF is checked first: it is HEIF with AV1 inside, and AVIF files also
# list the generic HEIF brands (``mif1``, ``msf1``).
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
# BMP's magic is only "BM", which plenty of text starts with; the DIB header size that follows
# the 14-byte file header is one of a handful of values in every real BMP.
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost: bytes on disk or on the wire, and decoded pixels."""

    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1:
            raise ValueError("image limits must be positive")


def sniff_format(data: bytes) -> str | None:
    """The image format named by the leading magic bytes, or ``None`` if it is not one of ours.

    Returns one of ``"jpeg"``, ``"png"``, ``"gif"``, ``"webp"``, ``"bmp"``, ``"tiff"``,
    ``"heif"``, ``"avif"``.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # classic and BigTIFF
        return "tiff"
    if (
        len(data) >= 18
        and data[:2] == b"BM"
        and int.from_bytes(data[14:18], "little") in _BMP_DIB_HEADER_SIZES
    ):
        return "bmp"
    return _sniff_ftyp(data)


def _sniff_ftyp(data: bytes) -> str | None:
    if len(data) < 16 or data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    if size < 16 or size % 4:
        return None
    box = data[8 : min(size, len(data), 512)]
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}
    brands.discard(box[4:8])  # the minor version, not a brand
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heif"
    return None


def content_hash(data: bytes) -> str:
    """The sha256 of ``data`` as lowercase hex: the identity of an image in caches and ledgers."""
    return hashlib.sha256(data).hexdigest()


def check_image_bytes(data: bytes, *, source: str, max_bytes: int) -> str:
    """Cheap checks that need no decoding; returns the sniffed format.

    Raises ``ImageTooLargeError`` over ``max_bytes`` and ``ImageDecodeError`` for empty data
    or data without a known image signature.
    """
    if not data:
        raise ImageDecodeError(source, "empty file")
    if len(data) > max_bytes:
        raise ImageTooLargeError(source, _bytes_over(len(data), max_bytes))
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError(source, "not an image (unrecognised format)")
    return fmt


def read_image_file(path: str | Path, *, max_bytes: int, source: str | None = None) -> bytes:
    """Read a local file, refusing it from ``stat`` alone when it is over ``max_bytes``.

    Missing, unreadable and non-regular files (directories, FIFOs, devices) raise
    ``ImageError`` rather than ``OSError``: a bad catalog path is a bad image, not a crash.
    """
    name = source if source is not None else str(path)
    try:
        # stat before open: opening a FIFO for reading would block until someone writes.
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError(name, "not a regular file")
        if info.st_size > max_bytes:
            raise ImageTooLargeError(name, _bytes_over(info.st_size, max_bytes))
        with open(path, "rb") as handle:
            # One byte past the limit catches a file that grew after the stat.
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageError(name, "no such file") from None
    except IsADirectoryError:
        raise ImageError(name, "not a regular file") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except OSError as exc:
        raise ImageError(name, f"cannot read file ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise ImageTooLargeError(name, _bytes_over(len(data), max_bytes))
    return data


def decode_image(
    data: bytes,
    *,
    source: str,
    limits: ImageLimits = ImageLimits(),
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode ``data`` into a fully loaded, file-independent RGB image.

    EXIF orientation is applied; alpha is composited on white; palette, grey, 16-bit and CMYK
    images become 8-bit RGB. ``draft_size`` lets a large JPEG decode at a reduced scale that
    is still at least that size on each side (after orientation).

    Raises ``ImageDecodeError`` (empty, truncated, corrupt, not an image) or
    ``ImageTooLargeError`` (over ``limits``); both name ``source`` and the reason.
    """
    if draft_size is not None and min(draft_size) < 1:
        raise ValueError(f"draft_size must be positive, got {draft_size}")
    fmt = check_image_bytes(data, source=source, max_bytes=limits.max_bytes)
    missing = _missing_plugin(fmt)
    if missing:
        raise ImageDecodeError(source, missing)
    # Pillow's own bomb check warns (and later raises) on its global MAX_IMAGE_PIXELS. We do
    # not touch that global; we turn its warning into an exception here so that it is
    # reported like our own limit. Pillow's plugins also warn about damaged metadata
    # ("Corrupt EXIF data", skipped TIFF tags) in images that decode fine: noise, dropped.
    # catch_warnings is process-global state; threads decoding at once can at worst leave
    # these two filters installed, which is harmless.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as img:
                return _decode_opened(img, source=source, limits=limits, draft_size=draft_size)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(
                source, f"decompression bomb refused by Pillow ({exc})"
            ) from exc
        except UnidentifiedImageError as exc:
            raise ImageDecodeError(source, f"truncated or corrupt {fmt} header") from exc
        except EOFError as exc:
            raise ImageDecodeError(source, "truncated image file") from exc
        except (OSError, SyntaxError, ValueError, IndexError, KeyError, TypeError) as exc:
            # Pillow's plugins signal bad data with any of these; "truncated" shows up in
            # OSError messages from the incremental decoder.
            if "truncated" in str(exc).lower():
                raise ImageDecodeError(source, "truncated image file") from exc
            raise ImageDecodeError(source, f"corrupt {fmt} image ({exc})") from exc
        except MemoryError as exc:
            raise ImageTooLargeError(source, "not enough memory to decode") from exc


def load_image(
    path: str | Path,
    *,
    limits: ImageLimits = ImageLimits(),
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Read and decode a local image file; see ``decode_image``. Errors name ``path``."""
    data = read_image_file(path, max_bytes=limits.max_bytes)
    return decode_image(data, source=str(path), limits=limits, draft_size=draft_size)


def _decode_opened(
    img: Image.Image,
    *,
    source: str,
    limits: ImageLimits,
    draft_size: tuple[int, int] | None,
) -> Image.Image:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(source, f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            source,
            f"{width}x{height} is {width * height} pixels, over the limit of {limits.max_pixels}",
        )
    if draft_size is not None and isinstance(img, JpegImagePlugin.JpegImageFile):
        target = draft_size
        # draft() works on the stored (unrotated) raster, so ask for the rotated size when
        # EXIF orientation will swap the sides afterwards.
        if _orientation(img) in _ROTATED_ORIENTATIONS:
            target = (draft_size[1], draft_size[0])
        img.draft("RGB", target)
    img.load()
    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception:
        # EXIF is metadata: a broken block must not lose an otherwise good image.
        oriented = img.copy()
    return _to_rgb(oriented, source=source)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # same reasoning as in _decode_opened: broken EXIF is ignored
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(img: Image.Image, *, source: str) -> Image.Image:
    """8-bit RGB, always a new image detached from any file."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # Pillow's own I->L conversion clips at 255 (a 16-bit photo turns white); scale the
        # 16-bit range down instead.
        wide = np.asarray(img).astype(np.int64)
        narrow = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(narrow).convert("RGB")
    try:
        if "A" in img.getbands() or "a" in img.getbands() or "transparency" in img.info:
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, _WHITE)
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return img.convert("RGB")
    except ValueError as exc:
        raise ImageDecodeError(source, f"unsupported image mode {img.mode}") from exc


def _register_heif() -> bool:
    """Register pillow-heif's HEIF opener with Pillow (once, at import); False without it."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    # HEIC's own thumbnails and depth maps are never used here: do not decode them.
    register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
    return True


_HEIF_READY = _register_heif()
_AVIF_READY = bool(features.check("avif"))


def _missing_plugin(fmt: str) -> str | None:
    """Why this installation cannot decode ``fmt``, or None when it can."""
    if fmt == "heif" and not _HEIF_READY:
        return "HEIC/HEIF image, but pillow-heif is not installed (pip install pillow-heif)"
    if fmt == "avif" and not _AVIF_READY:
        return "AVIF image, but this Pillow has no AVIF support (pip install 'pillow>=11.3')"
    return None


def _bytes_over(size: int, limit: int) -> str:
    return f"{size} bytes is over the limit of {limit} bytes"
