"""Streaming file digests. Other modules call these, never ``hashlib`` directly.

Trust assumption: the digest is of the bytes read at hashing time. A file that is
rewritten while being hashed yields a digest of neither version; callers that
need a consistent view (safe_load) hash the exact buffer they then use.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final

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
