"""Simulated shopper photos of a rendered pack: turned, warped, re-lit, on a cluttered shelf."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PHOTO_SIZE = 480

# How hard the shopper photos are, tuned so that a generic ImageNet CNN (MobileNetV2) still
# ranks the right catalog front first for about 80% of them.
MAX_TURN = 20.0  # largest in-plane rotation, degrees
MAX_CORNER_SHIFT = 0.1  # largest corner move of the perspective warp, fraction of pack size
FILL = (0.7, 0.92)  # the pack's longer side, fraction of the photo side
CLUTTER = (2, 6)  # how many random shapes the background has
BACKGROUND_SATURATION = 0.5  # 1 keeps the background's random colours, 0 makes it grey


def shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    """The colour darkened (f < 1) or lightened (f > 1)."""
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def _perspective_coeffs(
    dst: list[tuple[float, float]], src: list[tuple[float, float]]
) -> tuple[float, ...]:
    """Coefficients for ``Image.transform(PERSPECTIVE)`` mapping output ``dst`` to input ``src``."""
    rows: list[list[float]] = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs = np.array([c for pt in src for c in pt], dtype=np.float64)
    return tuple(float(c) for c in np.linalg.solve(np.array(rows, dtype=np.float64), rhs))


def _background(rng: random.Random) -> Image.Image:
    """A cluttered scene: a gradient, a few blurred shapes, shelves (drawn at half size)."""
    n = PHOTO_SIZE // 2
    top = np.array([rng.randint(90, 230) for _ in range(3)], dtype=np.float32)
    bottom = np.array([rng.randint(40, 200) for _ in range(3)], dtype=np.float32)
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None, None]
    arr = np.broadcast_to(top * (1 - t) + bottom * t, (n, n, 3))
    img = Image.fromarray(arr.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(*CLUTTER)):
        x, y = rng.randint(-20, n), rng.randint(-20, n)
        w, h = rng.randint(15, 70), rng.randint(15, 80)
        colour = (rng.randint(60, 220), rng.randint(60, 220), rng.randint(60, 220))
        if rng.random() < 0.4:
            draw.ellipse((x, y, x + w, y + h), fill=colour)
        else:
            draw.rectangle((x, y, x + w, y + h), fill=colour)
    wood = (rng.randint(110, 170), rng.randint(80, 120), rng.randint(40, 80))
    for _ in range(rng.randint(1, 2)):
        y = rng.randint(n // 4, n - 15)
        draw.rectangle((0, y, n, y + rng.randint(6, 12)), fill=wood)
        draw.rectangle((0, y, n, y + 1), fill=shade(wood, 1.3))
    img = img.filter(ImageFilter.BoxBlur(rng.uniform(0.8, 1.5)))
    if BACKGROUND_SATURATION < 1:
        img = Image.blend(img.convert("L").convert("RGB"), img, BACKGROUND_SATURATION)
    return img.resize((PHOTO_SIZE, PHOTO_SIZE), Image.Resampling.BILINEAR)


def _warp(obj: Image.Image, rng: random.Random, longest: float) -> Image.Image:
    """Blur a little, turn (``MAX_TURN``), move each corner (``MAX_CORNER_SHIFT``), scale.

    One perspective transform does the geometry, so the pack is resampled only once; the
    work is done on premultiplied alpha so that edges do not darken.
    """
    w, h, shift = obj.size[0], obj.size[1], MAX_CORNER_SHIFT
    corners = [(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))]
    angle = np.deg2rad(rng.uniform(-MAX_TURN, MAX_TURN))
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    quad = []
    for x, y in corners:
        dx, dy = (
            x - w / 2 + rng.uniform(-1, 1) * shift * w,
            y - h / 2 + rng.uniform(-1, 1) * shift * h,
        )
        quad.append((cos * dx - sin * dy, sin * dx + cos * dy))
    lo_x, lo_y = min(x for x, _ in quad), min(y for _, y in quad)
    scale = longest / max(max(x for x, _ in quad) - lo_x, max(y for _, y in quad) - lo_y)
    quad = [((x - lo_x) * scale, (y - lo_y) * scale) for x, y in quad]
    size = (int(max(x for x, _ in quad)) + 1, int(max(y for _, y in quad)) + 1)
    coeffs = _perspective_coeffs(quad, corners)
    blurred = obj.convert("RGBa").filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    warped = blurred.transform(size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR)
    return warped.convert("RGBA")


def _relight(scene: Image.Image, rng: random.Random) -> Image.Image:
    """Change contrast, brightness and colour temperature with one lookup table."""
    mean = float(np.asarray(scene.reduce(8).convert("L")).mean())
    contrast, brightness = rng.uniform(0.8, 1.15), rng.uniform(0.75, 1.2)
    warm = rng.uniform(-0.12, 0.12)
    lut = [
        min(255, max(0, round(((v - mean) * contrast + mean) * brightness * gain)))
        for gain in (1 + warm, 1.0, 1 - warm)
        for v in range(256)
    ]
    return scene.point(lut)


def shopper_photo(front: Image.Image, rng: random.Random, noise: np.ndarray) -> Image.Image:
    """The pack (RGBA, transparent around it) photographed on a shelf: see the module doc.

    ``noise`` is an int16 sensor-noise tile larger than the photo; a random window is used.
    """
    n = PHOTO_SIZE
    obj = _warp(front.crop(front.getbbox()), rng, rng.uniform(*FILL) * n)
    scene = _background(rng)
    x = min(max((n - obj.width) // 2 + rng.randint(-40, 40), 0), n - obj.width)
    y = min(max((n - obj.height) // 2 + rng.randint(-30, 30), 0), n - obj.height)
    soft = obj.getchannel("A").point(lambda v: v * 2 // 5).filter(ImageFilter.BoxBlur(5))
    scene.paste((20, 20, 20), (x + 8, y + 6, x + 8 + obj.width, y + 6 + obj.height), soft)
    scene.paste(obj, (x, y), obj)
    scene = _relight(scene, rng)
    ox, oy = rng.randrange(noise.shape[1] - n + 1), rng.randrange(noise.shape[0] - n + 1)
    arr = np.asarray(scene, dtype=np.int16) + noise[oy : oy + n, ox : ox + n]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
