"""Streaming file digests. Other modules call these, never ``hashlib`` directly.

Trust assumption: the digest is of the bytes read at hashing time. A file that is
rewritten while being hashed yields a digest of neither version; callers that
need a consistent view (safe_load) hash the exact buffer they then use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final, Protocol

CHUNK: Final = 1 << 20


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex SHA-256 of an in-memory buffer."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, *, start: int = 0, length: int | None = None) -> str:
    """Hex SHA-256 of a file, or of ``length`` bytes from ``start``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    remaining = length
    with open(path, "rb", buffering=0) as handle:
        if start:
            handle.seek(start)
        while remaining is None or remaining > 0:
            want = CHUNK if remaining is None else min(CHUNK, remaining)
            got = handle.readinto(view[:want])
            if not got:
                break
            digest.update(view[:got])
            if remaining is not None:
                remaining -= got
    return digest.hexdigest()


HASH_ALGORITHMS: Final = ("sha256", "blake3")
"""Digest algorithms a manifest may name; sha256 is the default everywhere."""


class Hasher(Protocol):
    """The part of ``hashlib``/``blake3`` hash objects that callers use."""

    def update(self, data: bytes | memoryview, /) -> object:
        """Feed bytes (large buffers are hashed with the GIL released)."""

    def hexdigest(self) -> str:
        """Hex digest of everything fed so far."""


def new_hasher(algorithm: str, *, threads: int = 1) -> Hasher:
    """A fresh hash object for ``algorithm`` (``sha256`` or ``blake3``).

    ``threads`` > 1 lets BLAKE3 use that many threads per update (``-1``: all cores);
    SHA-256 is sequential by construction and ignores it. Both release the GIL on
    large buffers, so callers parallelise across ranges with a thread pool.
    """
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "blake3":
        import blake3

        if threads == -1:
            return blake3.blake3(max_threads=blake3.blake3.AUTO)  # type: ignore[no-any-return]
        return blake3.blake3(max_threads=max(1, threads))  # type: ignore[no-any-return]
    raise ValueError(f"unknown hash algorithm {algorithm!r}; use one of {HASH_ALGORITHMS}")
