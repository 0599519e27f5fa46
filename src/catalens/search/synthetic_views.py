"""Synthetic shopper-like views of catalog images: what a cold-start calibration is fitted on.

A new collection has no shopper photo and often one image per product, so nothing can be
held out. Instead each sampled catalog image is photographed by the sample catalog's photo
simulator (``sample/photos.py``: turned, warped, blurred, re-lit, on a cluttered shelf)
and embedded (``embed_views``: the plain view, one forward a photo, where a photo query
averages its zoom views: a third of the cost, docs/quality.md "Cold-start verdicts"), giving
labelled photo-like queries of the collection's own products with the collection's own model.

Deterministic for a seed: the same catalog images give the same views.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

from catalens.embedders import l2_normalize
from catalens.embedders.base import Embedder
from catalens.sample.photos import PHOTO_SIZE, shopper_photo
from catalens.search.query_crops import query_views, zoom_pixels

__all__ = ["cut_out", "embed_views", "render_views"]

WHITE = 235
"""A background pixel of a catalog image is at least this bright in every channel."""
EDGE_STEP = 4
"""Border pixels (of the small mask), this many apart, where the background is flood-filled
from."""
MASK_SIDE = 128
"""The background is found on a copy of the image at most this many pixels a side."""
NOISE_SIGMA = 3.0
PLAIN = (1.0,)
"""The zoom views a synthetic photo is embedded with: the plain view only (see
``embed_views``)."""
BATCH = 32
"""Views embedded in one model call."""


def cut_out(image: Image.Image) -> Image.Image:
    """The catalog image as an RGBA pack: its near-white background, where connected to the
    border (so white print on the pack stays), made transparent. An image with no white
    border stays opaque whole (a photo-like catalog image)."""
    rgb = image.convert("RGB")
    arr = np.asarray(rgb)
    white = Image.fromarray((arr.min(axis=2) >= WHITE).astype(np.uint8) * 255, "L")
    # PIL's flood fill walks pixels in Python (0.45 s for 512 px): fill a small copy of the
    # mask and scale the result back; the edge it draws is a pixel or two coarser.
    w, h = white.size
    scale = min(1.0, MASK_SIDE / max(w, h))
    mask = white.resize(
        (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.NEAREST
    )
    mw, mh = mask.size
    border = [(x, y) for x in range(0, mw, EDGE_STEP) for y in (0, mh - 1)]
    border += [(x, y) for y in range(0, mh, EDGE_STEP) for x in (0, mw - 1)]
    for point in border:
        if mask.getpixel(point) == 255:
            ImageDraw.floodfill(mask, point, 128)
    filled = mask.resize((w, h), Image.Resampling.NEAREST)
    background = (np.asarray(filled) == 128) & (np.asarray(white) == 255)
    if background.mean() > 0.97:  # nothing but background: keep the image as it is
        background[:] = False
    alpha = np.where(background, 0, 255).astype(np.uint8)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


def render_views(
    image: Image.Image,
    views: int,
    *,
    seed: str,
    neighbours: Sequence[Image.Image] = (),
    hard: Mapping[str, float] | None = None,
) -> list[Image.Image]:
    """``views`` simulated shopper photos of one catalog image (seeded by ``seed``), with
    ``neighbours`` (other catalog images) beside it on the shelf. An RGBA image is taken as
    already cut out (``cut_out``): a caller that shows an image many times cuts it once."""
    rng = random.Random(seed)
    front = _cut(image)
    others = [_cut(n) for n in neighbours]
    side = PHOTO_SIZE + 64
    noise_rng = np.random.default_rng(rng.randrange(2**32))
    noise = noise_rng.normal(0.0, NOISE_SIGMA, (side, side, 3)).round().astype(np.int16)
    knobs = {**HARD, **(hard or {})}
    return [
        _harder(shopper_photo(front, rng, noise), front, others, rng, knobs) for _ in range(views)
    ]


HARD = {"neighbours": 3.0, "pile": 0.7, "zoom": 1.6, "low_res": 0.8, "colour": 0.2}
"""How much harder than the simulator's own photos the views are (on top of it): other packs
beside the product, a pile of copies of it (``pile``: the chance), a closer framing (up to
``zoom``), a low-resolution capture (the chance) and a colour cast (+-``colour``). Real
shelf photos score far lower against the catalog than the simulator's clean ones (top
cosine 0.68 against 0.82 with MobileNetV2), and a fit on easy views trusts margins that
real photos never reach; these were chosen on 600 ``extra`` photos of grocery-dev (not
``val``, not the 800 held out for the check)."""


def _harder(
    photo: Image.Image,
    front: Image.Image,
    others: Sequence[Image.Image],
    rng: random.Random,
    knobs: Mapping[str, float],
) -> Image.Image:
    n = photo.width
    scene = photo.copy()
    # Neighbours on the shelf, at the sides, partly out of frame.
    for _ in range(int(knobs["neighbours"])):
        if not others:
            break
        other = rng.choice(list(others))
        size = int(n * rng.uniform(0.35, 0.6))
        other = _fit(other, size)
        x = rng.choice(
            [rng.randint(-size // 2, n // 8), rng.randint(n - n // 8 - size // 2, n - size // 3)]
        )
        y = rng.randint(-size // 4, n - size // 2)
        scene.paste(other, (x, y), other)
    # Several of the same item (a pile), smaller, around the centre.
    if rng.random() < knobs["pile"]:
        for _ in range(rng.randint(1, 3)):
            size = int(n * rng.uniform(0.3, 0.5))
            copy = _fit(front.rotate(rng.uniform(-40, 40), expand=True), size)
            scene.paste(copy, (rng.randint(0, n - size), rng.randint(0, n - size)), copy)
    # Closer than the catalog framing: part of the item out of frame.
    zoom = rng.uniform(1.0, knobs["zoom"])
    if zoom > 1.01:
        w = int(n / zoom)
        x, y = rng.randint(0, n - w), rng.randint(0, n - w)
        scene = scene.crop((x, y, x + w, y + w)).resize((n, n), Image.Resampling.BILINEAR)
    if rng.random() < knobs["low_res"]:
        small = rng.randint(96, 200)
        scene = scene.resize((small, small), Image.Resampling.BILINEAR).resize(
            (n, n), Image.Resampling.BILINEAR
        )
    c = knobs["colour"]
    gains = [rng.uniform(1 - c, 1 + c) for _ in range(3)]
    arr = np.asarray(scene, dtype=np.float32) * np.array(gains, dtype=np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _cut(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGBA" else cut_out(image)


def _fit(image: Image.Image, size: int) -> Image.Image:
    box = image.getbbox() or (0, 0, image.width, image.height)
    cropped = image.crop(box)
    scale = size / max(cropped.size)
    return cropped.resize(
        (max(1, int(cropped.width * scale)), max(1, int(cropped.height * scale))),
        Image.Resampling.BILINEAR,
    )


def embed_views(
    embedder: Embedder,
    photos: Sequence[Image.Image],
    zooms: Sequence[float] = PLAIN,
    *,
    flip: bool = False,
    batch: int = BATCH,
) -> NDArray[np.float32]:
    """The (n, d) vectors of ``photos``: the mean of each photo's ``zooms`` views (and,
    with ``flip``, of the mirrored ones), renormalised, as a photo search makes its query
    vector (``query_views``). The default is the plain view only: one forward a photo. The
    views of several photos share each model call (``batch`` views a call)."""
    zooms = tuple(zooms) or PLAIN
    if not photos:
        return np.zeros((0, embedder.identity.dim), dtype=np.float32)
    used = len(zooms) * (2 if flip else 1)
    pixels = [zoom_pixels(embedder, p, zooms, flip=flip) for p in photos]
    if any(p is None for p in pixels):  # an embedder with its own preprocessing
        return np.vstack([query_views(embedder, p, zooms, flip=flip)[0] for p in photos])
    rows = np.concatenate([p[:used] for p in pixels if p is not None])
    vectors = np.concatenate(
        [embedder.embed_pixels(rows[at : at + batch]) for at in range(0, len(rows), batch)]
    )
    means = vectors.reshape(len(photos), used, -1).mean(axis=1)
    return l2_normalize(means).astype(np.float32)
