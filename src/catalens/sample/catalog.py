"""A small, self-made sample catalog: rendered product packs and "shopper photos" of them.

Used by ``make demo`` and by tests. Everything is drawn with Pillow from word lists and a
palette, deterministically for a seed (same seed, same bytes)::

    root/catalog.csv        shopify_product_id,title,images,preview_image,category,brand,price
    root/images/*.png       320x320 catalog views on white (front, and for some a side view)
    root/queries.csv        image_path,item_id: the shopper photos and the product they show
    root/queries/*.jpg      480x480 photos: the pack rotated, warped and re-lit on clutter

A few products are near-duplicates of the one before them (same brand, shape and motif,
another colour), like real product variants, so that search is not trivial.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from catalens.errors import ConfigError
from catalens.sample.photos import PHOTO_SIZE, shade, shopper_photo

__all__ = ["SampleCatalog", "SampleProduct", "generate_sample_catalog"]

CATALOG_SIZE = 320

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]
T = TypeVar("T")


@dataclass(frozen=True)
class SampleProduct:
    """One generated product; ``images`` and ``shopper_photos`` are paths under the root."""

    id: str
    title: str
    category: str
    brand: str
    images: tuple[Path, ...]
    shopper_photos: tuple[Path, ...]


@dataclass(frozen=True)
class SampleCatalog:
    """Where a generated sample catalog lies and what it holds."""

    root: Path
    catalog_csv: Path
    queries_csv: Path
    products: tuple[SampleProduct, ...]


@dataclass(frozen=True)
class _Pack:
    """How one product's pack looks."""

    category: str
    brand: str
    name: str
    size: str
    shape: str
    motif: str
    pattern: str
    main: RGB
    accent: RGB

    @property
    def title(self) -> str:
        return f"{self.brand} {self.name} {self.size}"


# (category, item, sizes, pack shapes that suit it)
_ITEMS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Medicine", "Paracetamol", ("500mg", "650mg"), ("box", "bottle")),
    ("Medicine", "Ibuprofen", ("200mg", "400mg"), ("box", "jar")),
    ("Medicine", "Vitamin C", ("250mg", "500mg"), ("tube", "jar", "bottle")),
    ("Medicine", "Cough Syrup", ("100ml",), ("bottle",)),
    ("Medicine", "Antiseptic Cream", ("30g",), ("tube", "jar")),
    ("Medicine", "Oral Saline", ("10 sachets",), ("pouch", "box")),
    ("Dairy", "Milk", ("1L", "500ml"), ("box", "bottle")),
    ("Dairy", "Yogurt", ("500g",), ("jar",)),
    ("Dairy", "Butter", ("200g",), ("box",)),
    ("Dairy", "Milk Powder", ("400g", "1kg"), ("can", "pouch")),
    ("Dairy", "Ghee", ("400g",), ("jar", "can")),
    ("Beverages", "Cola", ("250ml", "330ml"), ("can", "bottle")),
    ("Beverages", "Mango Juice", ("1L",), ("box", "bottle")),
    ("Beverages", "Green Tea", ("25 bags",), ("box",)),
    ("Beverages", "Instant Coffee", ("100g", "200g"), ("jar", "pouch")),
    ("Beverages", "Lemon Soda", ("330ml",), ("can",)),
    ("Snacks", "Oat Crunch Cereal", ("375g",), ("box", "pouch")),
    ("Snacks", "Potato Chips", ("150g",), ("pouch", "can")),
    ("Snacks", "Salted Crackers", ("200g",), ("box",)),
    ("Snacks", "Choco Cookies", ("120g",), ("box", "pouch")),
    ("Snacks", "Mixed Nuts", ("250g",), ("jar", "pouch")),
    ("Personal care", "Herbal Shampoo", ("340ml",), ("bottle",)),
    ("Personal care", "Mint Toothpaste", ("100g",), ("tube", "box")),
    ("Personal care", "Aloe Face Wash", ("100ml",), ("tube",)),
    ("Personal care", "Body Lotion", ("200ml",), ("bottle", "tube")),
    ("Household", "Dish Wash Liquid", ("500ml",), ("bottle",)),
    ("Household", "Laundry Powder", ("1kg",), ("pouch", "box")),
    ("Household", "Glass Cleaner", ("500ml",), ("bottle",)),
)
_BRANDS: dict[str, tuple[str, ...]] = {
    "Medicine": ("Napa", "Ace", "Seclo", "Renova", "Medix"),
    "Dairy": ("Arla", "Milkvita", "Aarong", "Dano"),
    "Beverages": ("Fizzo", "Tropica", "Leafy", "Brewster"),
    "Snacks": ("Crunchy", "Golden", "Nutri", "Bisko"),
    "Personal care": ("Fresha", "Pureleaf", "Glowy", "Dentix"),
    "Household": ("Sparkle", "Cleano", "Brite"),
}
_VARIANTS = ("Lite", "Extra", "Plus", "Zero", "Classic", "Gold")
_MOTIFS = ("stripes", "circle", "diamond", "band")
_PATTERNS = ("dots", "hatch", "checks", "waves", "rings", "plain")
# red, orange, yellow, lime, green, teal, sky, blue, purple, magenta, brown, charcoal
_PALETTE: tuple[RGB, ...] = (
    *((214, 39, 40), (245, 130, 32), (240, 200, 30), (130, 195, 50), (25, 140, 65)),
    *((20, 160, 165), (50, 140, 225), (30, 55, 160), (120, 60, 175), (205, 50, 140)),
    *((125, 75, 40), (45, 45, 55)),
)
_WHITE: RGB = (255, 255, 255)
_DARK: RGB = (25, 25, 30)


def _dist(a: RGB, b: RGB) -> float:
    return float(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5)


def _ink(background: RGB) -> RGB:
    """Black or white, whichever reads better on ``background``."""
    r, g, b = background
    return _DARK if 0.299 * r + 0.587 * g + 0.114 * b > 150 else _WHITE


def _least_used(options: list[T], counts: dict[T, int], rng: random.Random) -> T:
    low = min(counts.get(o, 0) for o in options)
    return rng.choice([o for o in options if counts.get(o, 0) == low])


def _spread(colours: list[RGB], shape: str, packs: list[_Pack]) -> list[RGB]:
    """The colours that keep a pack of ``shape`` far from the others of that shape."""
    mains = [p.main for p in packs if p.shape == shape]
    for gap in (150.0, 100.0, 1.0):
        far = [c for c in colours if all(_dist(c, m) >= gap for m in mains)]
        if far:
            return far
    return colours


def _design_packs(n: int, rng: random.Random) -> list[_Pack]:
    """Choose n pack designs, spreading shapes, colours and motifs; every 6th is a variant."""
    items = list(_ITEMS)
    rng.shuffle(items)
    packs: list[_Pack] = []
    titles: set[str] = set()
    used: dict[str, int] = {}
    k = 0
    while len(packs) < n:
        i = len(packs)
        if i % 6 == 5:
            base = packs[-1]
            far = [c for c in _PALETTE if _dist(c, base.main) > 120 and _dist(c, base.accent) > 90]
            far = _spread(far or [c for c in _PALETTE if c != base.main], base.shape, packs)
            main = _least_used(far, {c: used.get(str(c), 0) for c in far}, rng)
            options = [v for v in _VARIANTS if f"{base.brand} {v} {base.name}" not in titles]
            name = f"{rng.choice(options or list(_VARIANTS))} {base.name}"
            pack = replace(base, name=name, main=main)
        else:
            category, item, sizes, shapes = items[k % len(items)]
            brands = [b for b in _BRANDS[category] if f"{b} {item}" not in titles]
            brand = rng.choice(brands or list(_BRANDS[category]))
            k += 1
            shape = _least_used(list(shapes), used, rng)
            free = _spread(list(_PALETTE), shape, packs)
            main = _least_used(free, {c: used.get(str(c), 0) for c in free}, rng)
            motif = _least_used(list(_MOTIFS), used, rng)
            pattern = _least_used(list(_PATTERNS), used, rng)
            accent = rng.choice([c for c in _PALETTE if _dist(c, main) > 170] + [_WHITE])
            pack = _Pack(
                category, brand, item, rng.choice(sizes), shape, motif, pattern, main, accent
            )
        titles.add(f"{pack.brand} {pack.name}")
        for key in (pack.shape, pack.motif, pack.pattern, str(pack.main)):
            used[key] = used.get(key, 0) + 1
        packs.append(pack)
    return packs


# ---------------------------------------------------------------------------------------
# Drawing a pack


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _body(draw: ImageDraw.ImageDraw, pack: _Pack, s: float) -> Box:
    """Draw the pack's silhouette on a canvas of side ``s``; return the label box."""
    main, accent, dark = pack.main, pack.accent, shade(pack.main, 0.7)
    cx = s / 2
    if pack.shape == "box":
        x0, y0, x1, y1, d = 0.24 * s, 0.16 * s, 0.70 * s, 0.88 * s, 0.08 * s
        draw.polygon([(x1, y0), (x1 + d, y0 - d), (x1 + d, y1 - d), (x1, y1)], fill=dark)
        draw.polygon(
            [(x0, y0), (x0 + d, y0 - d), (x1 + d, y0 - d), (x1, y0)], fill=shade(main, 1.25)
        )
        draw.rectangle((x0, y0, x1, y1), fill=main)
        return (x0, y0, x1, y1)
    if pack.shape == "bottle":
        x0, x1, y0, y1 = 0.31 * s, 0.69 * s, 0.36 * s, 0.92 * s
        draw.rectangle((cx - 0.05 * s, 0.08 * s, cx + 0.05 * s, 0.15 * s), fill=accent)
        draw.rectangle((cx - 0.045 * s, 0.14 * s, cx + 0.045 * s, 0.24 * s), fill=dark)
        draw.polygon(
            [(cx - 0.045 * s, 0.23 * s), (cx + 0.045 * s, 0.23 * s), (x1, y0), (x0, y0)], fill=main
        )
        draw.rounded_rectangle((x0, y0 - 0.02 * s, x1, y1), radius=0.05 * s, fill=main)
        return (x0, y0 + 0.04 * s, x1, y1 - 0.06 * s)
    if pack.shape == "can":
        x0, x1, y0, y1, e = 0.29 * s, 0.71 * s, 0.14 * s, 0.86 * s, 0.05 * s
        draw.rectangle((x0, y0, x1, y1), fill=main)
        draw.ellipse((x0, y1 - e, x1, y1 + e), fill=main)
        draw.ellipse((x0, y0 - e, x1, y0 + e), fill=(190, 190, 198), outline=(120, 120, 128))
        draw.rectangle(
            (x0 + 0.05 * s, y0 + 0.03 * s, x0 + 0.08 * s, y1 - 0.03 * s), fill=shade(main, 1.3)
        )
        return (x0, y0 + 0.1 * s, x1, y1 - 0.08 * s)
    if pack.shape == "pouch":
        x0, x1, y0, y1 = 0.22 * s, 0.78 * s, 0.14 * s, 0.9 * s
        teeth = [(x0 + (x1 - x0) * t / 12, y0 + (0.02 * s if t % 2 else 0.0)) for t in range(13)]
        draw.polygon([*teeth, (x1 + 0.03 * s, y1), (x0 - 0.03 * s, y1)], fill=main)
        draw.rectangle((x0, y0 + 0.03 * s, x1, y0 + 0.07 * s), fill=dark)
        return (x0, y0 + 0.1 * s, x1, y1 - 0.02 * s)
    if pack.shape == "tube":
        draw.rectangle((0.25 * s, 0.08 * s, 0.75 * s, 0.15 * s), fill=dark)
        draw.polygon(
            [(0.25 * s, 0.14 * s), (0.75 * s, 0.14 * s), (0.64 * s, 0.8 * s), (0.36 * s, 0.8 * s)],
            fill=main,
        )
        draw.rounded_rectangle(
            (0.4 * s, 0.79 * s, 0.6 * s, 0.92 * s),
            radius=0.02 * s,
            fill=accent,
            outline=shade(accent, 0.6),
        )
        return (0.3 * s, 0.2 * s, 0.7 * s, 0.74 * s)
    # jar
    x0, x1, y0, y1 = 0.18 * s, 0.82 * s, 0.34 * s, 0.86 * s
    draw.rounded_rectangle((x0, y0, x1, y1), radius=0.07 * s, fill=main)
    draw.rounded_rectangle(
        (x0 + 0.02 * s, 0.2 * s, x1 - 0.02 * s, y0 + 0.02 * s),
        radius=0.03 * s,
        fill=accent,
        outline=shade(accent, 0.6),
    )
    return (x0 + 0.03 * s, y0 + 0.05 * s, x1 - 0.03 * s, y1 - 0.04 * s)


def _motif(draw: ImageDraw.ImageDraw, pack: _Pack, label: Box, top: float, s: float) -> None:
    """Draw the motif in the label below ``top`` (where the text ends)."""
    x0, _, x1, y1 = label
    y0 = top
    w, h = x1 - x0, y1 - y0
    accent = pack.accent
    if pack.motif == "stripes":
        for t in (0.45, 0.85):
            draw.polygon(
                [
                    (x0, y0 + t * h),
                    (x1, y0 + (t - 0.18) * h),
                    (x1, y0 + (t - 0.1) * h),
                    (x0, y0 + (t + 0.08) * h),
                ],
                fill=accent,
            )
    elif pack.motif == "circle":
        r, cx, cy = 0.42 * min(w, h), x0 + 0.5 * w, y0 + 0.5 * h
        draw.circle((cx, cy), r, fill=accent)
        draw.circle((cx, cy), 0.55 * r, fill=shade(pack.main, 0.8))
    elif pack.motif == "diamond":
        r, cx, cy = 0.45 * min(w, h), x0 + 0.5 * w, y0 + 0.5 * h
        draw.regular_polygon((cx, cy, r), 4, rotation=45, fill=accent)
        draw.regular_polygon((cx, cy, r / 2), 4, rotation=45, fill=_ink(accent))
    else:  # band: behind the brand name, and a thin one at the bottom
        draw.rectangle((x0, label[1] + 0.005 * s, x1, label[1] + 0.12 * s), fill=accent)
        draw.rectangle((x0, y1 - 0.2 * h, x1, y1 - 0.08 * h), fill=accent)


def _lines(draw: ImageDraw.ImageDraw, pack: _Pack, width: float, s: float) -> list[str]:
    """The product name wrapped to ``width``, then the pack size."""
    font, lines = _font(max(8, int(0.045 * s))), [""]
    for word in pack.name.split():
        trial = f"{lines[-1]} {word}".strip()
        if lines[-1] and draw.textlength(trial, font=font) > width:
            lines.append(word)
        else:
            lines[-1] = trial
    return [*lines, pack.size]


def _text(draw: ImageDraw.ImageDraw, pack: _Pack, label: Box, lines: list[str], s: float) -> None:
    x0, y0, x1, _ = label
    cx = (x0 + x1) / 2
    brand_bg = pack.accent if pack.motif == "band" else pack.main
    size = int(0.08 * s)
    while size > 8 and draw.textlength(pack.brand, font=_font(size)) > (x1 - x0) * 0.9:
        size -= 1
    draw.text((cx, y0 + 0.03 * s), pack.brand, font=_font(size), fill=_ink(brand_bg), anchor="mt")
    font = _font(max(8, int(0.045 * s)))
    for k, line in enumerate(lines):
        draw.text(
            (cx, y0 + (0.13 + 0.052 * k) * s), line, font=font, fill=_ink(pack.main), anchor="mt"
        )


def _pattern(img: Image.Image, pack: _Pack, label: Box, s: float) -> None:
    """Overlay the pack's surface pattern (a lighter or darker tone) on its main colour.

    The label stays plain, so the text reads well.
    """
    if pack.pattern == "plain":
        return
    layer = Image.new("RGB", img.size, pack.main)
    draw = ImageDraw.Draw(layer)
    tone = shade(pack.main, 0.8) if sum(pack.main) > 300 else shade(pack.main, 1.35)
    step = 0.055 * s
    count = int(s / step) + 2
    for a in range(count):
        for b in range(count):
            x, y = a * step, b * step
            if pack.pattern == "dots":
                r = 0.012 * s
                draw.ellipse((x - r, y - r, x + r, y + r), fill=tone)
            elif pack.pattern == "checks" and (a + b) % 2:
                draw.rectangle((x, y, x + step, y + step), fill=tone)
        if pack.pattern == "hatch":
            x = a * step
            draw.line([(x, 0), (x - s, s)], fill=tone, width=max(1, int(0.012 * s)))
            draw.line([(x + s, 0), (x, s)], fill=tone, width=max(1, int(0.012 * s)))
        elif pack.pattern == "waves":
            y = a * step
            points = [(t * s / 40, y + 0.015 * s * np.sin(t / 2)) for t in range(41)]
            draw.line(points, fill=tone, width=max(1, int(0.01 * s)))
        elif pack.pattern == "rings":
            r = a * step
            draw.ellipse((-r, s - r, r, s + r), outline=tone, width=max(1, int(0.012 * s)))
    arr = np.asarray(img)
    mask = np.all(arr[..., :3] == np.array(pack.main, np.uint8), axis=-1) & (arr[..., 3] > 0)
    x0, y0, x1, y1 = (round(v) for v in label)
    mask[y0:y1, x0:x1] = False
    img.paste(layer, (0, 0), Image.fromarray(mask.astype(np.uint8) * 255, "L"))


def _render_pack(pack: _Pack, side: int) -> Image.Image:
    """The pack alone on a transparent ``side`` x ``side`` canvas."""
    s = float(side)
    img = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    label = _body(ImageDraw.Draw(img), pack, s)
    _pattern(img, pack, label, s)
    draw = ImageDraw.Draw(img)
    lines = _lines(draw, pack, (label[2] - label[0]) * 0.9, s)
    _motif(draw, pack, label, label[1] + (0.13 + 0.052 * len(lines)) * s, s)
    _text(draw, pack, label, lines, s)
    return img


def _on_white(pack_img: Image.Image) -> Image.Image:
    out = Image.new("RGB", pack_img.size, _WHITE)
    out.paste(pack_img, (0, 0), pack_img)
    return out


def _side_view(pack_img: Image.Image, rng: random.Random) -> Image.Image:
    """A second catalog view: the pack a little turned (narrower), zoomed and shifted."""
    side = pack_img.width
    zoom = rng.uniform(0.85, 1.15)
    size = (round(side * zoom * rng.uniform(0.78, 0.9)), round(side * zoom))
    img = _on_white(pack_img).resize(size, Image.Resampling.LANCZOS)
    out = Image.new("RGB", (side, side), _WHITE)
    x, y = (side - size[0]) // 2 + rng.randint(-16, 16), (side - size[1]) // 2 + rng.randint(-8, 8)
    out.paste(img, (x, y))
    return out


# ---------------------------------------------------------------------------------------


def generate_sample_catalog(
    root: Path, *, products: int = 24, shopper_photos_per_product: int = 2, seed: int = 0
) -> SampleCatalog:
    """Render a sample catalog under ``root`` (created if needed; files are overwritten).

    Every product gets a front view, about 60% a second view, and each gets
    ``shopper_photos_per_product`` shopper photos. Same arguments, same bytes.
    """
    if products < 1:
        raise ConfigError(f"products must be at least 1, got {products}")
    if shopper_photos_per_product < 0:
        raise ConfigError(
            f"shopper_photos_per_product must be >= 0, got {shopper_photos_per_product}"
        )
    images_dir, queries_dir = root / "images", root / "queries"
    images_dir.mkdir(parents=True, exist_ok=True)
    queries_dir.mkdir(parents=True, exist_ok=True)
    side = PHOTO_SIZE + 64
    noise = np.random.default_rng(seed).normal(0.0, 3.0, (side, side, 3)).round().astype(np.int16)
    packs = _design_packs(products, random.Random(f"catalens-sample:{seed}:design"))
    catalog_rows: list[list[str]] = []
    query_rows: list[list[str]] = []
    result: list[SampleProduct] = []
    for i, pack in enumerate(packs, start=1):
        pid = f"p{i:03d}"
        rng = random.Random(f"catalens-sample:{seed}:{pid}")
        front = _render_pack(pack, CATALOG_SIZE)
        views = {"front": _on_white(front)}
        if rng.random() < 0.6:
            views["side"] = _side_view(front, rng)
        rel_images = [f"images/{pid}_{view}.png" for view in views]
        for rel, img in zip(rel_images, views.values(), strict=True):
            img.save(root / rel, format="PNG")
        rel_photos = [f"queries/{pid}_q{q}.jpg" for q in range(1, shopper_photos_per_product + 1)]
        for rel in rel_photos:
            shopper_photo(front, rng, noise).save(root / rel, format="JPEG", quality=85)
            query_rows.append([rel, pid])
        price = f"{rng.randrange(20, 900) + rng.choice((0.0, 0.5, 0.99)):.2f}"
        images, photos = tuple(root / r for r in rel_images), tuple(root / r for r in rel_photos)
        result.append(SampleProduct(pid, pack.title, pack.category, pack.brand, images, photos))
        row = [pid, pack.title, json.dumps(rel_images), rel_images[0], pack.category, pack.brand]
        catalog_rows.append([*row, price])
    catalog_csv, queries_csv = root / "catalog.csv", root / "queries.csv"
    header = ["shopify_product_id", "title", "images", "preview_image", "category", "brand"]
    _write_csv(catalog_csv, [*header, "price"], catalog_rows)
    _write_csv(queries_csv, ["image_path", "item_id"], query_rows)
    return SampleCatalog(root, catalog_csv, queries_csv, tuple(result))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
