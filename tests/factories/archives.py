"""Zip and archive fixtures made by code: differentials, polyglots, nesting.

Every function takes the bytes of a real zip (usually a real ``torch.save``
output) and returns a rewritten copy, so each trick is tested on exactly the
archives PyTorch produces. Payloads are harmless: they write a marker file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib

LOCAL = b"PK\x03\x04"
CENTRAL = b"PK\x01\x02"
EOCD = b"PK\x05\x06"


def marker_payload(marker: str) -> bytes:
    """A protocol-2 pickle that calls ``builtins.exec`` to create ``marker`` (never run)."""
    code = f"open({marker!r}, 'w').write('pwned')"
    return (
        b"\x80\x02cbuiltins\nexec\nq\x00X"
        + struct.pack("<I", len(code))
        + code.encode()
        + b"\x85R."
    )


def os_system_payload(marker: str) -> bytes:
    """Protocol-0 ``os.system('touch MARKER')``."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


def zip_bytes(
    members: list[tuple[str, bytes]], *, compress: int = zipfile.ZIP_STORED, comment: bytes = b""
) -> bytes:
    """A plain zip of ``members`` written by the stdlib."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compress) as archive:
        for name, content in members:
            archive.writestr(name, content)
        archive.comment = comment
    return buffer.getvalue()


def central_records(data: bytes) -> list[int]:
    """Offsets of every central directory record."""
    eocd = data.rfind(EOCD)
    cd_size, cd_offset = struct.unpack("<II", data[eocd + 12 : eocd + 20])
    out, pos = [], cd_offset
    while pos < cd_offset + cd_size:
        out.append(pos)
        nlen, elen, clen = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        pos += 46 + nlen + elen + clen
    return out


def _name_at_central(data: bytes, pos: int) -> bytes:
    nlen = struct.unpack("<H", data[pos + 28 : pos + 30])[0]
    return data[pos + 46 : pos + 46 + nlen]


def find_member(data: bytes, suffix: str) -> tuple[int, int]:
    """``(central record offset, local header offset)`` of the first member ending in ``suffix``."""
    for pos in central_records(data):
        if _name_at_central(data, pos).decode().endswith(suffix):
            local = struct.unpack("<I", data[pos + 42 : pos + 46])[0]
            return pos, local
    raise KeyError(suffix)


def rename_local(data: bytes, suffix: str, new_name: bytes) -> bytes:
    """CVE-2025-1944: the local header names the member differently (same length)."""
    _, local = find_member(data, suffix)
    nlen = struct.unpack("<H", data[local + 26 : local + 28])[0]
    assert len(new_name) == nlen
    out = bytearray(data)
    out[local + 30 : local + 30 + nlen] = new_name
    return bytes(out)


def set_flags(data: bytes, suffix: str, bits: int) -> bytes:
    """CVE-2025-1945: set general-purpose flag bits in both headers."""
    central, local = find_member(data, suffix)
    out = bytearray(data)
    for pos, field in ((central, 8), (local, 6)):
        (flags,) = struct.unpack("<H", out[pos + field : pos + field + 2])
        out[pos + field : pos + field + 2] = struct.pack("<H", flags | bits)
    return bytes(out)


def corrupt_crc(data: bytes, suffix: str) -> bytes:
    """CVE-2025-10156: a wrong CRC in the central directory, local header and descriptor."""
    central, local = find_member(data, suffix)
    out = bytearray(data)
    (crc,) = struct.unpack("<I", out[central + 16 : central + 20])
    bad = struct.pack("<I", crc ^ 0xDEADBEEF)
    out[central + 16 : central + 20] = bad
    (flags,) = struct.unpack("<H", out[local + 6 : local + 8])
    if flags & 0x08:
        csize = struct.unpack("<I", out[central + 20 : central + 24])[0]
        nlen, elen = struct.unpack("<HH", out[local + 26 : local + 30])
        desc = local + 30 + nlen + elen + csize
        if out[desc : desc + 4] == b"PK\x07\x08":
            desc += 4
        out[desc : desc + 4] = bad
    else:
        out[local + 14 : local + 18] = bad
    return bytes(out)


def replace_member(data: bytes, suffix: str, content: bytes) -> bytes:
    """Rewrite one member of a real zip (torch.save output) with new content, keeping order."""
    source = zipfile.ZipFile(io.BytesIO(data))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            body = content if info.filename.endswith(suffix) else source.read(info)
            out.writestr(info.filename, body)
    return buffer.getvalue()


def hide_member(members: list[tuple[str, bytes]], hidden_index: int) -> bytes:
    """A zip whose local entry ``hidden_index`` is missing from the central directory."""
    data = zip_bytes(members)
    records = central_records(data)
    eocd = data.rfind(EOCD)
    drop = records[hidden_index]
    end = records[hidden_index + 1] if hidden_index + 1 < len(records) else eocd
    removed = end - drop
    out = bytearray(data[:drop] + data[end:])
    eocd -= removed
    count = len(records) - 1
    cd_size = struct.unpack("<I", out[eocd + 12 : eocd + 16])[0] - removed
    out[eocd + 8 : eocd + 12] = struct.pack("<HH", count, count)
    out[eocd + 12 : eocd + 16] = struct.pack("<I", cd_size)
    return bytes(out)


def duplicate_names(first: bytes, second: bytes, name: str = "archive/data.pkl") -> bytes:
    """Two members with the same name (the stdlib warns but writes both)."""
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, first)
            archive.writestr(name, second)
    return buffer.getvalue()


def with_prefix(data: bytes, prefix: bytes) -> bytes:
    """Bytes before the zip (an SFX stub or a pickle polyglot); offsets left as they were."""
    return prefix + data


def comment_with_records(data: bytes) -> bytes:
    """An archive comment that carries a central directory signature."""
    eocd = data.rfind(EOCD)
    comment = b"note " + CENTRAL + b"hidden"
    out = bytearray(data[: eocd + 20]) + struct.pack("<H", len(comment)) + comment
    return bytes(out)


def append_trailing(data: bytes, tail: bytes) -> bytes:
    """Bytes after the end record that its comment length does not cover."""
    return data + tail


def gzip_bytes(data: bytes) -> bytes:
    """A gzip wrapper."""
    return gzip.compress(data)


def bz2_bytes(data: bytes) -> bytes:
    """A bzip2 wrapper."""
    return bz2.compress(data)


def xz_bytes(data: bytes) -> bytes:
    """An xz wrapper."""
    return lzma.compress(data)


def zlib_bytes(data: bytes) -> bytes:
    """A bare zlib stream (joblib's ``compress=`` default)."""
    return zlib.compress(data)


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A tar of ``members``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def zip_bomb(size: int = 64 << 20) -> bytes:
    """A deflated member of zeros with a huge compression ratio."""
    return zip_bytes([("zeros.bin", b"\0" * size)], compress=zipfile.ZIP_DEFLATED)
