"""Format detection by content: magic bytes and structure, never the file name.

Extension routing is how scanners were bypassed (a pickle saved as ``.bin``,
``.safetensors`` or ``data.txt``: CVE-2025-1889, CVE-2025-10155). Every decision
here looks at bytes only. The result is a *first guess*: containers re-check
their own structure, and anything that is not recognised is still offered to the
pickle machine, because ``torch.load`` and ``numpy.load`` fall back to
``pickle.load`` for any file that is not a zip or an ``.npy``.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

SNIFF_BYTES: Final = 512
"""How many leading bytes :func:`sniff` needs (tar's magic sits at offset 257)."""


class Kind(enum.StrEnum):
    """What the leading bytes say a buffer is."""

    ZIP = "zip"
    NPY = "numpy-npy"
    SAFETENSORS = "safetensors"
    GZIP = "gzip"
    BZIP2 = "bz2"
    XZ = "xz"
    LZMA = "lzma"
    ZLIB = "zlib"
    SEVENZIP = "7z"
    LZ4 = "lz4"
    ZSTD = "zstd"
    TAR = "tar"
    PICKLE = "pickle"
    """A pickle with a PROTO header (protocol 2-5)."""
    MAYBE_PICKLE = "maybe-pickle"
    """Starts with a byte that is a protocol 0/1 opcode; only the pickle machine can tell."""
    EMPTY = "empty"
    DATA = "data"
    """Nothing recognised."""


# Opcodes that can start a protocol 0/1 pickle; '.' (STOP) alone is a valid empty pickle.
_PROTO0_START: Final = frozenset(b"(.0123FIJKLMNPQRSTUVXabcdeghijklopqrstu}])GJ\x88\x89\x8a\x8b")
_TORCH_LEGACY_MAGIC: Final = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
"""Protocol-2 pickle of torch's legacy magic number 0x1950A86A20F9469CFC6C."""


def sniff(head: bytes, size: int) -> Kind:
    """Classify a buffer from its first :data:`SNIFF_BYTES` bytes and its total ``size``."""
    if size == 0 or not head:
        return Kind.EMPTY
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return Kind.ZIP
    if head.startswith(b"\x93NUMPY"):
        return Kind.NPY
    if head.startswith(b"\x1f\x8b"):
        return Kind.GZIP
    if head.startswith(b"BZh") and len(head) > 3 and head[3:4] in b"123456789":
        return Kind.BZIP2
    if head.startswith(b"\xfd7zXZ\x00"):
        return Kind.XZ
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return Kind.SEVENZIP
    if head.startswith(b"\x04\x22\x4d\x18"):
        return Kind.LZ4
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return Kind.ZSTD
    if len(head) >= 262 and head[257:262] == b"ustar":
        return Kind.TAR
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:
        return Kind.PICKLE
    if looks_like_safetensors(head, size):
        return Kind.SAFETENSORS
    if len(head) >= 2 and head[0] == 0x78 and ((head[0] << 8) | head[1]) % 31 == 0:
        return Kind.ZLIB
    if head.startswith(b"\x5d\x00\x00") and len(head) >= 13:
        return Kind.LZMA
    if head[0] in _PROTO0_START:
        return Kind.MAYBE_PICKLE
    return Kind.DATA


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file, then a JSON object."""
    if len(head) < 9 or size < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and head[8:9] == b"{"


def is_torch_legacy(head: bytes) -> bool:
    """The legacy (non-zip) ``torch.save`` format starts with its magic-number pickle."""
    return head.startswith(_TORCH_LEGACY_MAGIC)
