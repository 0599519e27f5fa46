"""Atomic, checksummed generations of files in a ``FaissStore`` directory.

A directory holds ``manifest.json`` and the files of one generation, each named
``<role>.<generation>.<ext>``. Writing a generation puts all its files beside the old ones,
fsyncs them, then swaps ``manifest.json`` in with ``os.replace``: a process killed at any
point leaves either the old or the new manifest, and each names complete files whose size
and SHA-256 it records. Files no manifest names (a write cut short, the previous
generation) are removed afterwards, under a lock so that two processes do not race on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from catalens.errors import StoreError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_LOCK = ".lock"
_GENERATION_FILE = re.compile(r"^[a-z]+\.[0-9a-f]{32}\.(?:npy|bin)$")
_MANIFEST_TEMP = re.compile(r"^manifest\.[0-9a-f]{32}\.tmp$")

Payload = bytes | NDArray[Any]
"""A file's content: arrays are stored as ``.npy`` (streamed, no pickles), bytes as they are."""


@dataclass(frozen=True)
class Generation:
    """A loaded generation: its manifest and every file it names, checksums verified."""

    manifest: dict[str, Any]
    files: dict[str, bytes]

    @property
    def names(self) -> set[str]:
        return {str(entry["name"]) for entry in self.manifest["files"].values()}


class _HashingWriter:
    """Counts and hashes what ``np.save`` streams into a file, so nothing is buffered twice."""

    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.sha256.update(data)
        self.size += memoryview(data).nbytes
        return self._handle.write(data)


def write_generation(
    directory: Path, header: Mapping[str, Any], payloads: Mapping[str, Payload]
) -> set[str]:
    """Write ``payloads`` and a manifest of ``header`` durably; returns the file names.

    The caller holds ``directory_lock``. On failure the previous generation stays current.
    """
    generation = uuid.uuid4().hex
    files: dict[str, dict[str, Any]] = {}
    for role, payload in payloads.items():
        name = f"{role}.{generation}.{'npy' if isinstance(payload, np.ndarray) else 'bin'}"
        digest, size = _write_durably(directory / name, payload)
        files[role] = {"name": name, "sha256": digest, "bytes": size}
    manifest = {**header, "format": FORMAT_VERSION, "generation": generation, "files": files}
    temp = directory / f"manifest.{generation}.tmp"
    _write_durably(temp, json.dumps(manifest, indent=1).encode())
    # The data files' directory entries must be durable before a manifest can name them.
    _fsync_directory(directory)
    os.replace(temp, directory / MANIFEST)
    _fsync_directory(directory)
    return {entry["name"] for entry in files.values()}


def read_generation(directory: Path) -> Generation | None:
    """The current generation, or None when the directory has no manifest yet."""
    path = directory / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read: {exc}") from exc
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"format is not {FORMAT_VERSION}")
        entries = {
            str(role): (str(entry["name"]), str(entry["sha256"]), int(entry["bytes"]))
            for role, entry in manifest["files"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"{path}: not a valid store manifest ({exc})") from exc
    files = {role: _read_verified(directory, *entry) for role, entry in entries.items()}
    return Generation(manifest, files)


def _read_verified(directory: Path, name: str, sha256: str, size: int) -> bytes:
    if not _GENERATION_FILE.match(name):
        raise StoreError(f"{directory / MANIFEST}: names an unexpected file {name!r}")
    path = directory / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"{path}: named by {MANIFEST} but cannot be read: {exc}") from exc
    if len(data) != size:
        raise StoreError(
            f"{path}: checksum mismatch, {len(data)} bytes where {MANIFEST} records {size}"
            " (truncated or overwritten)"
        )
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoreError(f"{path}: checksum mismatch, the file is corrupt")
    return data


def decode_array(data: bytes, role: str) -> NDArray[Any]:
    """An array saved by ``write_generation``; the result is read-only."""
    try:
        array: NDArray[Any] = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise StoreError(f"saved {role} array cannot be read: {exc}") from exc
    return array


def remove_stale(directory: Path, keep: set[str]) -> None:
    """Remove generation files and manifest drafts that ``keep`` does not name.

    The caller holds ``directory_lock``, so no other process is mid-write in here.
    """
    for path in directory.iterdir():
        name = path.name
        stale = _GENERATION_FILE.match(name) or _MANIFEST_TEMP.match(name)
        if stale and name not in keep:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive across processes while writing or sweeping. Not re-entrant."""
    with (directory / _LOCK).open("a+b") as handle:
        if sys.platform != "win32":
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        # Windows has no flock; there one process per store directory is assumed.
        yield


def _write_durably(path: Path, payload: Payload) -> tuple[str, int]:
    with path.open("wb") as handle:
        writer = _HashingWriter(handle)
        if isinstance(payload, np.ndarray):
            np.save(writer, payload, allow_pickle=False)
        else:
            writer.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    return writer.sha256.hexdigest(), writer.size


def _fsync_directory(directory: Path) -> None:
    if sys.platform == "win32":  # directories cannot be opened (or fsynced) there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
