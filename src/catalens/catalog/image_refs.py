"""Image references in catalog fields: what counts as one, and reading lists of them.

Catalog exports mangle image lists in a handful of recurring ways (Python reprs with single
quotes, doubled quotes from bad CSV escaping, arrays cut short). ``parse_image_field`` repairs
those when there is only one sensible reading and says what it repaired; anything it would
have to guess at raises ``ImageFieldError`` so the row is rejected instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from catalens.refs import is_url

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jfif",
        ".png",
        ".gif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".avif",
    }
)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Leftovers of a list that was not parsed right; no sane image reference contains them.
_NEVER_IN_REF = frozenset('"{}\r\n\t\x00')
_NEVER_IN_PATH = _NEVER_IN_REF | frozenset("[]")
_SNIPPET = 60


class ImageFieldError(ValueError):
    """An image field that cannot be read without guessing; the message says why."""


@dataclass(frozen=True)
class ParsedImages:
    """The references read from one field, and the repairs it took to read them."""

    refs: tuple[str, ...]
    repairs: tuple[str, ...] = ()


def has_image_extension(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def looks_like_image_ref(ref: str) -> bool:
    """An http(s) URL (any path: CDNs often drop the extension), or a path to an image file."""
    if not ref or ref != ref.strip():
        return False
    if _SCHEME.match(ref):
        if any(c.isspace() for c in ref) or any(c in _NEVER_IN_REF for c in ref):
            return False
        try:
            parts = urlsplit(ref)
        except ValueError:  # e.g. an unbalanced IPv6 bracket
            return False
        return parts.scheme.lower() in {"http", "https"} and bool(parts.netloc)
    if any(c in _NEVER_IN_PATH for c in ref) or ref[0] == "'" or ref[-1] == "'":
        return False
    return has_image_extension(ref)


def resolve_ref(ref: str, base: Path) -> str:
    """URLs as they are; paths made absolute against ``base`` (the catalog file's folder)."""
    if is_url(ref):
        return ref
    return os.path.normpath(os.path.join(base, ref))


def merge_refs(groups: Iterable[Sequence[str]], *, limit: int) -> tuple[str, ...]:
    """Concatenate, drop repeats (first occurrence wins), keep at most ``limit``."""
    merged = dict.fromkeys(ref for group in groups for ref in group)
    return tuple(merged)[:limit]


def parse_image_list(items: Sequence[object]) -> ParsedImages:
    """A list that is already structured (a JSON array): every entry must be a reference."""
    repairs: list[str] = []
    return _validated(items, repairs)


def parse_image_field(raw: str, *, expect_json: bool) -> ParsedImages:
    """Read one text field holding image references.

    Accepted as they are: a JSON array of strings and, unless ``expect_json``, a single
    URL/path or a ``|``, ``;`` or ``,`` separated list. Repaired (and reported): the other
    forms when ``expect_json``, single quotes, doubled quotes, a trailing comma, a missing
    closing bracket, whitespace inside entries, protocol-relative ``//host`` URLs.
    """
    text = raw.strip()
    if not text:
        return ParsedImages(())
    repairs: list[str] = []
    value = _try_json(text)
    if value is _NOT_JSON and '""' in text:
        text = text.replace('""', '"')
        repairs.append("doubled quotes (bad CSV escaping)")
        value = _try_json(text)
    if value is not _NOT_JSON:
        return _from_json(value, text, repairs, expect_json=expect_json)
    if text[0] == "[":
        items = _scan_bracketed(text, repairs)
    elif text[0] == "{":
        raise ImageFieldError(f"{_snippet(text)} is an object, not a list of image references")
    elif text[0] in "\"'":
        repairs.append("missing brackets")
        items = _scan_bracketed(f"[{text}]", repairs)
    else:
        items = _split_bare(text)
        if expect_json:
            shape = "a bare reference" if len(items) == 1 else "a separated list"
            repairs.append(f"{shape} instead of a JSON array")
    return _validated(items, repairs)


class _NotJson:
    pass


_NOT_JSON = _NotJson()
# strict=False lets control characters (a newline pasted into a URL) through to validation,
# which then strips or rejects them with a clearer reason than the JSON error.
_DECODER = json.JSONDecoder(strict=False)


def _try_json(text: str) -> object:
    try:
        return _DECODER.decode(text)
    except ValueError:
        return _NOT_JSON


def _from_json(value: object, text: str, repairs: list[str], *, expect_json: bool) -> ParsedImages:
    if value is None:
        return ParsedImages((), tuple(repairs))
    if isinstance(value, list):
        return _validated(value, repairs)
    if isinstance(value, str):
        # A quoted string: a double-encoded array or a single reference in quotes.
        inner = parse_image_field(value, expect_json=expect_json)
        return ParsedImages(inner.refs, (*repairs, "a quoted string", *inner.repairs))
    raise ImageFieldError(f"{_snippet(text)} is {_kind(value)}, not a list of image references")


def _validated(items: Sequence[object], repairs: list[str]) -> ParsedImages:
    refs: list[str] = []
    for number, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise ImageFieldError(f"entry {number} is {_kind(item)}, not a URL or path")
        ref = item.strip()
        if ref != item:
            repairs.append("whitespace inside an entry")
        if not ref:
            repairs.append("empty entries")
            continue
        if ref.startswith("//") and looks_like_image_ref("https:" + ref):
            ref = "https:" + ref
            repairs.append("protocol-relative URL")
        if not looks_like_image_ref(ref):
            raise ImageFieldError(
                f"{_snippet(ref)} is neither an http(s) URL nor a path to an image "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        refs.append(ref)
    return ParsedImages(tuple(refs), tuple(dict.fromkeys(repairs)))


def _scan_bracketed(text: str, repairs: list[str]) -> list[str]:
    """Entries of a ``[...]`` list that is not valid JSON."""
    body = text[1:].rstrip()
    if body.endswith("]"):
        body = body[:-1]
    else:
        repairs.append("missing closing bracket")
    if "[" in body or "{" in body:
        raise ImageFieldError("nested lists or objects in the image list")
    if '"' not in body and "'" not in body:
        pieces = _split_bare(body)
        if pieces:
            repairs.append("unquoted entries")
        return pieces
    items: list[str] = []
    i, n = 0, len(body)
    expecting_entry = True
    while True:
        while i < n and body[i].isspace():
            i += 1
        if i >= n:
            if items and expecting_entry:
                repairs.append("trailing comma")
            return items
        char = body[i]
        if not expecting_entry:
            if char != ",":
                raise ImageFieldError(f"unexpected {_snippet(body[i:])} after an entry")
            expecting_entry = True
            i += 1
            continue
        if char == ",":
            repairs.append("empty entries")
            i += 1
            continue
        if char == '"':
            end = _closing_double_quote(body, i)
            try:
                item = _DECODER.decode(body[i : end + 1])
            except ValueError as exc:
                raise ImageFieldError(f"bad escape in {_snippet(body[i : end + 1])}") from exc
        elif char == "'":
            end = body.find("'", i + 1)
            if end < 0:
                raise ImageFieldError(f"unterminated quoted entry {_snippet(body[i:])}")
            item = body[i + 1 : end]
            repairs.append("single quotes")
        else:
            raise ImageFieldError("a mix of quoted and unquoted entries")
        items.append(item)
        i = end + 1
        expecting_entry = False


def _closing_double_quote(body: str, start: int) -> int:
    i = start + 1
    while i < len(body):
        if body[i] == "\\":
            i += 2
            continue
        if body[i] == '"':
            return i
        i += 1
    raise ImageFieldError(f"unterminated quoted entry {_snippet(body[start:])}")


def _split_bare(text: str) -> list[str]:
    """Entries of unquoted text: one reference, or a ``|``, ``;`` or ``,`` separated list."""
    text = text.strip()
    if not text:
        return []
    split_failed = False
    for separator in ("|", ";", ","):
        if separator in text:
            pieces = [p.strip() for p in text.split(separator) if p.strip()]
            if _consistent(pieces):
                return pieces
            split_failed = True
    if split_failed and not is_url(text):
        raise ImageFieldError(f"cannot split {_snippet(text)} into image URLs or paths")
    words = text.split()
    # URLs cannot hold raw whitespace, so whitespace between URLs separates them;
    # a path may hold spaces, so anything else stays one reference.
    if len(words) > 1 and all(is_url(w) for w in words):
        return words
    return [text]


def _consistent(pieces: list[str]) -> bool:
    """Every piece is a reference, and all are URLs or all are paths.

    Mixed results mean the separator was part of a reference: a comma inside a URL
    (``.../w_100,h_100/a.jpg`` transformation URLs) splits into a URL and a "path".
    """
    normalized = ["https:" + p if p.startswith("//") else p for p in pieces]
    if not all(looks_like_image_ref(p) for p in normalized):
        return False
    urls = sum(is_url(p) for p in normalized)
    return urls in (0, len(normalized))


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a nested list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def _snippet(text: str) -> str:
    return repr(text if len(text) <= _SNIPPET else text[: _SNIPPET - 3] + "...")
