"""The own zip reader: every differential is reported; real archives are clean.

Each test builds its archive from a real ``torch.save`` output (or the stdlib)
and checks the reader's issues directly, so these tests do not depend on the
pickle machine. End-to-end verdicts for the same tricks are in test_formats_zip.
"""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from tests.factories import archives as af
from trainguard.scan.formats.zipreader import ZipArchive


def _rules(data: bytes) -> set[str]:
    return {issue.rule for issue in ZipArchive(memoryview(data)).issues}


@pytest.fixture(scope="module")
def torch_zip() -> bytes:
    torch = pytest.importorskip("torch")
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(6, dtype=torch.float32)}, buffer)
    return buffer.getvalue()


def test_real_torch_zip_has_no_issues(torch_zip: bytes) -> None:
    archive = ZipArchive(memoryview(torch_zip))
    assert archive.valid
    assert archive.issues == []
    names = [e.name for e in archive.entries]
    assert any(n.endswith("/data.pkl") for n in names)
    assert all(e.local_ok for e in archive.entries)


def test_stdlib_zips_are_clean_stored_and_deflated() -> None:
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        data = af.zip_bytes(
            [("a.txt", b"hello" * 100), ("b/c.bin", bytes(range(256)))], compress=method
        )
        archive = ZipArchive(memoryview(data))
        assert archive.issues == [], method
        for entry in archive.entries:
            content = archive.read(entry, max_bytes=1 << 20)
            with zipfile.ZipFile(io.BytesIO(data)) as ref:
                assert bytes(content) == ref.read(entry.name)


def test_local_name_mismatch(torch_zip: bytes) -> None:
    name = next(
        e.name for e in ZipArchive(memoryview(torch_zip)).entries if e.name.endswith("data.pkl")
    )
    swapped = name[:-8] + "datap.kl"
    assert "zip.name_mismatch" in _rules(af.rename_local(torch_zip, "data.pkl", swapped.encode()))


@pytest.mark.parametrize("bits", [0x01, 0x20, 0x40])
def test_encryption_flags(torch_zip: bytes, bits: int) -> None:
    assert "zip.encryption_flag" in _rules(af.set_flags(torch_zip, "data.pkl", bits))


def test_flag_mismatch_local_only(torch_zip: bytes) -> None:
    _, local = af.find_member(torch_zip, "data.pkl")
    out = bytearray(torch_zip)
    out[local + 6] ^= 0x01
    rules = _rules(bytes(out))
    assert {"zip.flag_mismatch", "zip.encryption_flag"} <= rules


def test_method_mismatch(torch_zip: bytes) -> None:
    _, local = af.find_member(torch_zip, "data.pkl")
    out = bytearray(torch_zip)
    out[local + 8 : local + 10] = struct.pack("<H", 8)
    assert "zip.method_mismatch" in _rules(bytes(out))


def test_descriptor_disagreement_is_reported(torch_zip: bytes) -> None:
    # torch writes data descriptors; corrupting the CRC touches central and descriptor alike,
    # so break only the descriptor here.
    central, local = af.find_member(torch_zip, "data.pkl")
    csize = struct.unpack("<I", torch_zip[central + 20 : central + 24])[0]
    nlen, elen = struct.unpack("<HH", torch_zip[local + 26 : local + 30])
    desc = local + 30 + nlen + elen + csize
    out = bytearray(torch_zip)
    start = desc + 4 if out[desc : desc + 4] == b"PK\x07\x08" else desc
    out[start + 4 : start + 8] = struct.pack("<I", csize + 1)
    assert "zip.descriptor_mismatch" in _rules(bytes(out))


def test_duplicate_names() -> None:
    data = af.duplicate_names(b"first", b"second")
    archive = ZipArchive(memoryview(data))
    assert "zip.duplicate_name" in {i.rule for i in archive.issues}
    # both entries are kept and readable by index
    assert [bytes(archive.read(e, max_bytes=100)) for e in archive.entries] == [
        b"first",
        b"second",
    ]


def test_hidden_local_entry() -> None:
    data = af.hide_member(
        [("a.txt", b"visible"), ("evil.pkl", b"hidden payload"), ("b.txt", b"also visible")], 1
    )
    archive = ZipArchive(memoryview(data))
    assert "zip.hidden_entry" in {i.rule for i in archive.issues}
    assert [e.name for e in archive.hidden] == ["evil.pkl"]
    assert bytes(archive.read(archive.hidden[0], max_bytes=100)) == b"hidden payload"


def test_hidden_entry_twin_no_gap() -> None:
    data = af.zip_bytes([("a.txt", b"visible"), ("evil.pkl", b"not hidden")])
    assert "zip.hidden_entry" not in _rules(data)


def test_members_before_an_empty_archive_are_found() -> None:
    # A zip followed by an empty zip whose long comment keeps the first end record
    # out of the tail: the last end record describes an empty archive, and the
    # members before it used to go unread (the gap check skipped count == 0).
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as archive:
        archive.comment = b"x" * 0xFFFF
    data = af.zip_bytes([("evil.pkl", b"hidden payload")]) + empty.getvalue()
    archive = ZipArchive(memoryview(data))
    assert "zip.hidden_entry" in {i.rule for i in archive.issues}
    assert [e.name for e in archive.hidden] == ["evil.pkl"]
    # twin: an empty archive on its own has nothing to report
    assert _rules(empty.getvalue()) == set()


def test_overlapping_entries() -> None:
    data = af.zip_bytes([("a.txt", b"A" * 50), ("b.txt", b"B" * 50)])
    records = af.central_records(data)
    first_local = struct.unpack("<I", data[records[0] + 42 : records[0] + 46])[0]
    out = bytearray(data)
    out[records[1] + 42 : records[1] + 46] = struct.pack("<I", first_local)
    rules = _rules(bytes(out))
    assert "zip.overlapping_entries" in rules


def test_prefix_data() -> None:
    data = af.zip_bytes([("a.txt", b"x")])
    rules = _rules(af.with_prefix(data, b"#!/bin/sh\nexit 0\n"))
    assert "zip.prefix_data" in rules or "zip.offset_shift" in rules


def test_trailing_data_and_comment_records() -> None:
    data = af.zip_bytes([("a.txt", b"x")])
    assert "zip.trailing_data" in _rules(af.append_trailing(data, b"junk after the end"))
    assert "zip.eocd_comment_records" in _rules(af.comment_with_records(data))
    # a plain comment is fine
    assert _rules(af.zip_bytes([("a.txt", b"x")], comment=b"just a comment")) == set()


def test_multiple_eocd() -> None:
    inner = af.zip_bytes([("a.txt", b"x")])
    # the first archive's end record survives inside the second archive's first member
    outer = af.zip_bytes([("payload.bin", inner)])
    rules = _rules(outer)
    assert "zip.multiple_eocd" not in rules  # the inner record lies inside a member's data
    # an end record repeated in the comment is a second, plausible EOCD
    eocd = inner.rfind(af.EOCD)
    record = inner[eocd : eocd + 22]
    doubled = inner[: eocd + 20] + struct.pack("<H", len(record)) + record
    assert "zip.multiple_eocd" in _rules(doubled)


def _with_placeholder_extra(members: list[tuple[str, bytes]]) -> tuple[bytes, int]:
    """A zip whose first member carries a 22-byte private extra field (ID 0xCAFE) in its
    local header only; returns it and the field's offset."""
    data = bytearray(af.zip_bytes(members))
    _, lo = af.find_member(bytes(data), members[0][0])
    name_len, extra_len = struct.unpack("<HH", data[lo + 26 : lo + 30])
    assert extra_len == 0
    field = struct.pack("<HH", 0xCAFE, 22) + bytes(22)
    at = lo + 30 + name_len
    data[lo + 28 : lo + 30] = struct.pack("<H", len(field))
    data[at:at] = field
    # every later offset moved by len(field): rebuild the central directory's offsets
    grown = len(field)
    eocd = data.rfind(af.EOCD)
    (cd_offset,) = struct.unpack("<I", data[eocd + 16 : eocd + 20])
    data[eocd + 16 : eocd + 20] = struct.pack("<I", cd_offset + grown)
    for pos in af.central_records(bytes(data)):
        (offset,) = struct.unpack("<I", data[pos + 42 : pos + 46])
        if offset > lo:
            data[pos + 42 : pos + 46] = struct.pack("<I", offset + grown)
    return bytes(data), at + 4


def test_end_record_hidden_in_a_local_header_is_reported() -> None:
    """A second, plausible end record inside a header (not member data) is reported."""
    data, field = _with_placeholder_extra([("a.txt", b"hello"), ("b.txt", b"world")])
    assert _rules(data) == set()  # the private extra field alone is fine
    eocd = data.rfind(af.EOCD)
    doubled = data[:field] + data[eocd : eocd + 22] + data[field + 22 :]
    issues = [i for i in ZipArchive(memoryview(doubled)).issues if i.rule == "zip.multiple_eocd"]
    assert [i.offset for i in issues] == [field]


def test_end_record_hidden_in_the_central_directory_is_reported() -> None:
    data = bytearray(af.zip_bytes([("a.txt", b"hello")]))
    eocd = data.rfind(af.EOCD)
    record = bytes(data[eocd : eocd + 22])
    (central,) = af.central_records(bytes(data))
    # a file comment on the central header carrying a copy of the end record
    data[central + 32 : central + 34] = struct.pack("<H", len(record))
    name_len, extra_len = struct.unpack("<HH", data[central + 28 : central + 32])
    at = central + 46 + name_len + extra_len
    data[at:at] = record
    data[eocd + 22 + 12 : eocd + 22 + 16] = struct.pack("<I", len(data) - 22 - central)
    rules = {i.rule for i in ZipArchive(memoryview(bytes(data))).issues}
    assert "zip.multiple_eocd" in rules


def test_end_record_in_tensor_bytes_is_not_a_finding() -> None:
    """Tensor data holding a copy of its own archive's end record (chance, or a nested
    zip) is member data: not a second end record."""
    torch = pytest.importorskip("torch")
    first = io.BytesIO()
    torch.save({"w": torch.zeros(8, dtype=torch.uint8)}, first)
    record = first.getvalue()[-22:]
    second = io.BytesIO()
    torch.save({"w": torch.frombuffer(bytearray(record[:8]), dtype=torch.uint8)}, second)
    data = second.getvalue()
    assert data[-22:-14] == record[:8] or af.EOCD in data[:-22]
    assert af.EOCD in data[:-22]  # the signature sits inside the tensor's bytes
    assert _rules(data) == set()


def test_count_mismatch() -> None:
    data = bytearray(af.zip_bytes([("a.txt", b"x"), ("b.txt", b"y")]))
    eocd = data.rfind(af.EOCD)
    data[eocd + 8 : eocd + 12] = struct.pack("<HH", 1, 1)
    assert "zip.count_mismatch" in _rules(bytes(data))


def test_zip64_archive_is_clean() -> None:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", allowZip64=True) as archive,
        archive.open("big.bin", "w", force_zip64=True) as handle,
    ):
        handle.write(b"z" * 1000)
    data = buffer.getvalue()
    parsed = ZipArchive(memoryview(data))
    assert parsed.issues == []
    assert bytes(parsed.read(parsed.entries[0], max_bytes=2000)) == b"z" * 1000


def test_truncated_and_garbage_never_crash() -> None:
    data = af.zip_bytes([("a.txt", b"x" * 100)])
    for cut in range(0, len(data), 7):
        ZipArchive(memoryview(data[:cut]))
    assert "zip.no_central_directory" in _rules(b"PK\x03\x04garbage")


def test_bad_crc_is_detected_on_read(torch_zip: bytes) -> None:
    from trainguard.scan.formats.zipreader import crc_ok

    data = af.corrupt_crc(torch_zip, "data.pkl")
    archive = ZipArchive(memoryview(data))
    entry = next(e for e in archive.entries if e.name.endswith("data.pkl"))
    assert not crc_ok(archive.read(entry, max_bytes=1 << 20), entry.crc)
    clean = ZipArchive(memoryview(torch_zip))
    entry = next(e for e in clean.entries if e.name.endswith("data.pkl"))
    assert crc_ok(clean.read(entry, max_bytes=1 << 20), entry.crc)
