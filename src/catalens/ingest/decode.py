"""Decode any catalog or query image safely into a fully loaded 8-bit RGB ``PIL.Image``.

Everything that can go wrong with one image becomes an ``ImageError`` naming the source and
the reason, so an ingest run records the image and moves on. Limits are checked before the
expensive work: the byte size before reading, the pixel count from the header before
decoding (a small file can claim gigapixels, and a 143 KB PNG really holds 49 MP). Given the
size a model needs, a large image is decoded small (JPEG ``draft``) or made small right after
loading (``reduce``), before any full-size copy; a ``PixelBudget`` bounds the pixels being
decoded at once across threads, and memory is handed back to the system after a burst.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import os
import platform
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError, features

from catalens.errors import BusyError, ImageDecodeError, ImageError, ImageTooLargeError

__all__ = [
    "ImageLimits",
    "PixelBudget",
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
# EXIF orientation -> the transpose that undoes it (as ImageOps.exif_transpose does).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes Image.reduce averages meaningfully; others (palette, 1-bit, 16-bit grey) become RGB
# at full size first.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr"})
# Only images larger than this are reduced: the memory is in large ones, and smaller ones
# decode exactly as catalog images do (a catalog image searched for itself scores 1).
_REDUCE_ABOVE_PIXELS = 4_000_000
_TRIM_AFTER_PIXELS = 16_000_000  # decoded since the last trim before a burst's end trims


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost: bytes on disk or on the wire, and decoded pixels."""

    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    """The most pixels an image's header may claim."""
    max_decode_pixels: int | None = None
    """The most pixels actually decoded (after a JPEG's reduced-scale ``draft``); ``None``:
    ``max_pixels``. Queries get a lower one than catalog images."""

    def __post_init__(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or (self.max_decode_pixels or 1) < 1:
            raise ValueError("image limits must be positive")


class PixelBudget:
    """The pixels being decoded at once across threads, at most ``capacity``: a decode
    waits up to ``wait`` seconds for room, then ``BusyError``. An image larger than the
    whole budget runs alone. When a burst ends (nothing in flight) after large decodes,
    the C heap is trimmed so that the memory goes back to the system. Thread-safe."""

    def __init__(self, capacity: int, *, wait: float = 2.0, retry_after: float = 1.0) -> None:
        if capacity < 1 or wait < 0:
            raise ValueError("a pixel budget needs capacity >= 1 and wait >= 0")
        self.capacity = capacity
        self.wait = wait
        self.retry_after = retry_after
        self._in_flight = 0
        self._since_trim = 0
        self._room = threading.Condition()

    @property
    def in_flight(self) -> int:
        with self._room:
            return self._in_flight

    @contextmanager
    def hold(self, pixels: int, *, source: str) -> Iterator[None]:
        """Room for decoding ``pixels`` for the length of the block."""
        cost = max(1, min(pixels, self.capacity))
        until = time.monotonic() + self.wait
        with self._room:
            while self._in_flight + cost > self.capacity:
                left = until - time.monotonic()
                if left <= 0 or not self._room.wait(left):
                    if self._in_flight + cost <= self.capacity:
                        break
                    raise BusyError(
                        f"{source}: the server is decoding {self._in_flight} pixels of other "
                        f"images (budget {self.capacity}); try again shortly",
                        retry_after=self.retry_after,
                    )
            self._in_flight += cost
        try:
            yield
        finally:
            with self._room:
                self._in_flight -= cost
                self._since_trim += pixels
                burst_over = self._in_flight == 0 and self._since_trim >= _TRIM_AFTER_PIXELS
                if burst_over:
                    self._since_trim = 0
                self._room.notify_all()
            if burst_over:
                release_memory()


def release_memory() -> bool:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``); False where
    there is no such call. Large images are freed in blocks that glibc keeps for reuse, so
    a burst of big decodes would otherwise leave the process at its peak size."""
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))


def _malloc_trim() -> Callable[[int], int] | None:
    global _TRIM
    if _TRIM is False:
        _TRIM = None
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                function = libc.malloc_trim
                function.argtypes = [ctypes.c_size_t]
                function.restype = ctypes.c_int
                _TRIM = function
            except (OSError, AttributeError):
                _TRIM = None
    return _TRIM if callable(_TRIM) else None


_TRIM: Callable[[int], int] | bool | None = False  # False: not looked up yet


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
    budget: PixelBudget | None = None,
    reduce: bool = False,
) -> Image.Image:
    """Decode ``data`` into a fully loaded, file-independent RGB image.

    EXIF orientation is applied; alpha is composited on white; palette, grey, 16-bit and CMYK
    images become 8-bit RGB. ``draft_size``: the least size (each side, after orientation)
    the caller needs; a large JPEG decodes at a reduced scale. With ``reduce``, a large
    image (over 4 MP) of any format at least twice that size is also reduced by a whole
    factor right after loading, before any full-size copy (queries; catalog images keep the
    full decode their stored vectors were made from). ``budget``: the decode holds room for
    its pixels (``BusyError`` when there is none in time).

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
            # The budget is held until the full-size image is closed (the stack exits last).
            with (
                ExitStack() as held,
                Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as img,
            ):

                def hold(pixels: int) -> None:
                    if budget is not None:
                        held.enter_context(budget.hold(pixels, source=source))

                return _decode_opened(
                    img,
                    source=source,
                    limits=limits,
                    draft_size=draft_size,
                    hold=hold,
                    reduce=reduce,
                )
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
    hold: Callable[[int], None],
    reduce: bool,
) -> Image.Image:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageDecodeError(source, f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            source,
            f"{width}x{height} is {width * height} pixels, over the limit of {limits.max_pixels}",
        )
    # A PNG's getexif() loads the whole image, so EXIF is read before load() only for a
    # JPEG, whose draft needs it.
    jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)
    orientation = _orientation(img) if jpeg else 1
    if jpeg and draft_size is not None:
        img.draft("RGB", _stored(draft_size, orientation))
    decoded = img.size[0] * img.size[1]  # after draft: what load() really allocates
    most = limits.max_decode_pixels or limits.max_pixels
    if decoded > most:
        raise ImageTooLargeError(
            source, f"{width}x{height} would decode {decoded} pixels, over the limit of {most}"
        )
    hold(decoded)
    img.load()
    if not jpeg:
        orientation = _orientation(img)
    target = None if draft_size is None or not reduce else _stored(draft_size, orientation)
    small = _reduced(img, target, source=source)
    method = _TRANSPOSES.get(orientation)
    if method is not None:
        small = small.transpose(method)
    if small.mode == "RGB" and not (small is img and img.readonly):
        # Already 8-bit RGB: the loaded pixels in a plain image detached from the file,
        # not copied (a copy of every decoded photo cost about 5% of its decode). Pixels
        # mapped from a plugin's buffer (read-only) are copied: they are not ours to keep.
        return small._new(small.im) if small is img else small
    return _to_rgb(small, source=source)


def _stored(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """``size`` on the stored raster, which draft() and reduce() work on: the sides swap
    when the EXIF orientation turns the image a quarter."""
    return (size[1], size[0]) if orientation in _ROTATED_ORIENTATIONS else size


def _reduced(img: Image.Image, target: tuple[int, int] | None, *, source: str) -> Image.Image:
    """``img`` reduced by the largest whole factor that keeps it at least ``target``, before
    any full-size copy is made (the full-size image is then only ever the decoded one)."""
    if target is None or img.size[0] * img.size[1] <= _REDUCE_ABOVE_PIXELS:
        return img
    factor = min(img.size[0] // target[0], img.size[1] // target[1])
    if factor < 2:
        return img
    if img.mode not in _REDUCIBLE:
        img = _to_rgb(img, source=source)  # palette indices cannot be averaged
    return img.reduce(factor)


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
