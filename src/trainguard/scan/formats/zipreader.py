"""A strict, read-only zip reader that reports every way two readers could disagree.

Why not :mod:`zipfile`? Because scanners built on it were bypassed again and
again by archives that PyTorch (miniz) loads but CPython refuses or reads
differently: a local-header name that differs from the central directory
(CVE-2025-1944), encryption flags torch ignores (CVE-2025-1945), a bad CRC
(CVE-2025-10156), duplicate names that shadow each other, entries hidden outside
the central directory, prefixed and suffixed data, several end records. This
reader parses the central directory *and* every local header, accounts for every
byte between them, and turns each disagreement into a :class:`ZipIssue` instead
of choosing one reading silently.

Cost: only the end records, the central directory and the local headers are
touched (plus any unaccounted gap); member data is read on demand through
:meth:`ZipArchive.read`, so a multi-gigabyte checkpoint costs as much as its
directory. The buffer is usually an ``mmap``: untouched pages are never read.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from typing import Any, Final

from trainguard.core.errors import LimitExceeded
from trainguard.core.findings import Severity, Verdict
from trainguard.core.record import FrozenRecord, Record

LOCAL_SIG: Final = b"PK\x03\x04"
CENTRAL_SIG: Final = b"PK\x01\x02"
EOCD_SIG: Final = b"PK\x05\x06"
ZIP64_EOCD_SIG: Final = b"PK\x06\x06"
ZIP64_LOCATOR_SIG: Final = b"PK\x06\x07"
DESCRIPTOR_SIG: Final = b"PK\x07\x08"

_EOCD = struct.Struct("<4sHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_CENTRAL_FIELDS = struct.Struct("<4s4xHH4xIIIHHH8xI")
"""The central header fields the reader uses (same layout as ``_CENTRAL``)."""
_LOCAL_FIELDS = struct.Struct("<4s2xHH4xIIIHH")
"""The local header fields the checks compare: sig, flags, method, crc, sizes, lengths."""
_DESCRIPTOR = struct.Struct("<III")
_DESCRIPTOR_WIDE = struct.Struct("<IQQ")

FLAG_ENCRYPTED: Final = 0x0001
FLAG_DESCRIPTOR: Final = 0x0008
FLAG_PATCHED: Final = 0x0020
FLAG_STRONG_ENCRYPTION: Final = 0x0040
FLAG_UTF8: Final = 0x0800

_SUSPICIOUS_FLAGS: Final = FLAG_ENCRYPTED | FLAG_PATCHED | FLAG_STRONG_ENCRYPTION

METHOD_STORED: Final = 0
METHOD_DEFLATED: Final = 8
METHOD_BZIP2: Final = 12
METHOD_LZMA: Final = 14
SUPPORTED_METHODS: Final = frozenset({METHOD_STORED, METHOD_DEFLATED, METHOD_BZIP2, METHOD_LZMA})
TORCH_METHODS: Final = frozenset({METHOD_STORED, METHOD_DEFLATED})
"""What PyTorch's miniz reader can inflate; anything else cannot be a loadable torch zip."""

_MAX_COMMENT: Final = 0xFFFF
_GAP_SCAN_LIMIT: Final = 64 << 20
"""Unaccounted gaps larger than this are reported without being searched byte by byte."""


class ZipIssue(FrozenRecord):
    """One disagreement or malformation; becomes a scanner finding."""

    __slots__ = ("evidence", "member", "message", "offset", "rule", "severity", "verdict")
    rule: str
    severity: Severity
    verdict: Verdict
    message: str
    member: str | None
    offset: int | None
    evidence: dict[str, Any]

    def __init__(
        self,
        rule: str,
        severity: Severity,
        verdict: Verdict,
        message: str,
        member: str | None = None,
        offset: int | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        """Record the issue."""
        _set = object.__setattr__
        _set(self, "rule", rule)
        _set(self, "severity", severity)
        _set(self, "verdict", verdict)
        _set(self, "message", message)
        _set(self, "member", member)
        _set(self, "offset", offset)
        _set(self, "evidence", {} if evidence is None else evidence)


class ZipEntry(Record):
    """One member, as the central directory (or, for hidden entries, a local header) says.

    ``index`` is the position in the central directory (-1 for an entry found only as
    a local header); ``header_offset`` the absolute offset of the local header;
    ``data_offset`` that of the member data (-1 while the local header is unread or
    unreadable); ``data_end`` the end of the member's bytes including any data
    descriptor; ``local_ok`` tells whether the local header was found and parsed.
    """

    __slots__ = (
        "compress_size",
        "crc",
        "data_end",
        "data_offset",
        "file_size",
        "flags",
        "header_offset",
        "index",
        "local_ok",
        "method",
        "name",
        "raw_name",
    )

    def __init__(
        self,
        name: str,
        raw_name: bytes,
        index: int,
        header_offset: int,
        method: int,
        flags: int,
        crc: int,
        compress_size: int,
        file_size: int,
        data_offset: int = -1,
        data_end: int = -1,
        local_ok: bool = False,
    ) -> None:
        """An entry whose local header is not checked yet."""
        self.name = name
        self.raw_name = raw_name
        self.index = index
        self.header_offset = header_offset
        self.method = method
        self.flags = flags
        self.crc = crc
        self.compress_size = compress_size
        self.file_size = file_size
        self.data_offset = data_offset
        self.data_end = data_end
        self.local_ok = local_ok

    @property
    def in_central_directory(self) -> bool:
        """False for entries hidden outside the central directory."""
        return self.index >= 0

    @property
    def is_dir(self) -> bool:
        """Directory entries hold no data."""
        return self.name.endswith("/") and self.file_size == 0


def _decode_name(raw: bytes, flags: int) -> str:
    if flags & FLAG_UTF8:
        return raw.decode("utf-8", "replace")
    return raw.decode("cp437")


class ZipArchive:
    """A parsed zip: entries in central-directory order plus every issue found."""

    def __init__(
        self,
        data: memoryview,
        *,
        max_entries: int = 1_000_000,
    ) -> None:
        """Parse ``data``."""
        self.data = data
        self.size = len(data)
        self.entries: list[ZipEntry] = []
        self.hidden: list[ZipEntry] = []
        self.issues: list[ZipIssue] = []
        self.prefix_end = 0
        """Bytes ``[0, prefix_end)`` precede the first record (an SFX stub or a polyglot)."""
        self.comment = b""
        self.zip64 = False
        self.valid = False
        """True when a central directory was found and parsed."""
        self._max_entries = max_entries
        base = data.obj if isinstance(data, memoryview) else data
        self._whole: bytes | mmap.mmap | None = (
            base
            if isinstance(base, bytes | mmap.mmap) and len(base) == self.size and data.contiguous
            else None
        )
        """The buffer under ``data`` when ``data`` covers all of it: slicing it gives bytes
        in one step and its ``find``/``rfind`` search in place."""
        self._parse()

    # -- reporting -----------------------------------------------------------------------
    def _issue(
        self,
        rule: str,
        severity: Severity,
        verdict: Verdict,
        message: str,
        *,
        member: str | None = None,
        offset: int | None = None,
        **evidence: Any,
    ) -> None:
        self.issues.append(ZipIssue(rule, severity, verdict, message, member, offset, evidence))

    def _bytes(self, start: int, length: int) -> bytes:
        if start < 0 or length < 0 or start + length > self.size:
            return b""
        whole = self._whole
        if whole is not None:
            return whole[start : start + length]
        return bytes(self.data[start : start + length])

    # -- end records ---------------------------------------------------------------------
    def _find_eocd(self) -> int:
        """Offset of the end record miniz and CPython would both use (the last one), or -1."""
        last = self.size - _EOCD.size
        if last >= 0 and self._bytes(last, 4) == EOCD_SIG:
            return last  # the usual layout (no archive comment): nothing can lie after it
        tail_start = max(0, last - _MAX_COMMENT)
        if self._whole is not None:
            return self._whole.rfind(EOCD_SIG, tail_start, last + len(EOCD_SIG))
        pos = bytes(self.data[tail_start : last + len(EOCD_SIG)]).rfind(EOCD_SIG)
        return -1 if pos < 0 else tail_start + pos

    def _report_other_eocds(self, chosen: int) -> None:
        """End records outside every member's data: two readers, two archives.

        A reader searching for the end record looks at most ``_MAX_COMMENT`` bytes back.
        Only the parts of that window that are no member's data are searched: a nested zip
        stored as a member carries its own end record, and tensor bytes may hold the
        signature by chance. A clean checkpoint's window is then its headers and central
        directory, not its whole (small) file.
        """
        window = max(0, self.size - _EOCD.size - _MAX_COMMENT)
        spans = sorted(
            (e.data_offset, e.data_end)
            for e in (*self.entries, *self.hidden)
            if 0 <= e.data_offset < e.data_end
        )
        spans.append((chosen, chosen))
        # searched in place, or a copy of the window only (a member of a larger buffer)
        whole, base = self._whole, 0
        if whole is None:
            whole, base = bytes(self.data[window:chosen]), window
        found: list[int] = []
        cursor = window
        reach = len(EOCD_SIG) - 1
        for lo, hi in spans:
            if cursor >= chosen:
                break
            if lo > cursor:
                # a record starting in [cursor, lo) may run into the data after it, but
                # not into the chosen record
                end = min(lo + reach, chosen) - base
                pos = whole.find(EOCD_SIG, cursor - base, end)
                while pos >= 0:
                    found.append(base + pos)
                    pos = whole.find(EOCD_SIG, pos + 1, end)
            if hi > cursor:
                cursor = hi
        for other in sorted(found, reverse=True):
            if not self._plausible_eocd(other):
                continue
            self._issue(
                "zip.multiple_eocd",
                Severity.HIGH,
                Verdict.MALICIOUS,
                "the archive holds more than one end-of-central-directory record; readers "
                "that search from different ends see different archives",
                offset=other,
                chosen=chosen,
            )

    def _plausible_eocd(self, offset: int) -> bool:
        """An end record whose central-directory pointer lands on a central header."""
        raw = self._bytes(offset, _EOCD.size)
        if len(raw) < _EOCD.size:
            return False
        _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack(raw)
        if count == 0:
            return bool(cd_size == 0)
        return self._bytes(cd_offset, 4) == CENTRAL_SIG or (
            offset - cd_size >= 0 and self._bytes(offset - cd_size, 4) == CENTRAL_SIG
        )

    def _parse(self) -> None:
        eocd = self._find_eocd()
        if eocd < 0:
            self._issue(
                "zip.no_central_directory",
                Severity.HIGH,
                Verdict.ERROR,
                "no end-of-central-directory record: the zip is truncated or not a zip",
            )
            self._walk_local_headers(0, self.size, hidden=True)
            return
        (_, disk, cd_disk, count_disk, count, cd_size, cd_offset, comment_len) = _EOCD.unpack(
            self._bytes(eocd, _EOCD.size)
        )
        comment_start = eocd + _EOCD.size
        available = self.size - comment_start
        self.comment = self._bytes(comment_start, min(comment_len, available))
        if comment_len > available:
            self._issue(
                "zip.eocd_comment_length",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"the end record declares a {comment_len}-byte comment but only {available} "
                "bytes follow",
                offset=eocd,
            )
        elif comment_len < available:
            self._issue(
                "zip.trailing_data",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"{available - comment_len} bytes follow the end-of-central-directory record",
                offset=comment_start + comment_len,
                length=available - comment_len,
            )
        if LOCAL_SIG in self.comment or CENTRAL_SIG in self.comment or EOCD_SIG in self.comment:
            self._issue(
                "zip.eocd_comment_records",
                Severity.HIGH,
                Verdict.MALICIOUS,
                "the archive comment contains zip record signatures (records hidden in the "
                "comment)",
                offset=comment_start,
            )
        if disk != 0 or cd_disk != 0 or count_disk != count:
            self._issue(
                "zip.multi_disk",
                Severity.MEDIUM,
                Verdict.ERROR,
                "the end record describes a multi-disk (spanned) archive, which loaders do "
                "not support",
                offset=eocd,
            )
        cd_end_limit = eocd
        locator = eocd - _ZIP64_LOCATOR.size
        if locator >= 0 and self._bytes(locator, 4) == ZIP64_LOCATOR_SIG:
            parsed = self._parse_zip64(locator, count, cd_size, cd_offset)
            if parsed is None:
                return
            count, cd_size, cd_offset, cd_end_limit = parsed
        elif 0xFFFF in (count,) or 0xFFFFFFFF in (cd_size, cd_offset):
            self._issue(
                "zip.zip64_missing",
                Severity.HIGH,
                Verdict.ERROR,
                "the end record asks for ZIP64 values but no ZIP64 locator precedes it",
                offset=eocd,
            )
        if count > self._max_entries:
            self._issue(
                "limit.archive_entries",
                Severity.HIGH,
                Verdict.ERROR,
                f"the central directory declares {count} entries (limit {self._max_entries})",
                offset=eocd,
            )
            return
        actual_cd = cd_end_limit - cd_size
        start = cd_offset
        if self._bytes(cd_offset, 4) != CENTRAL_SIG and count:
            if actual_cd >= 0 and self._bytes(actual_cd, 4) == CENTRAL_SIG:
                start = actual_cd
            else:
                self._issue(
                    "zip.bad_central_directory",
                    Severity.HIGH,
                    Verdict.ERROR,
                    "the central directory offset does not point at a central directory",
                    offset=cd_offset,
                )
                self._walk_local_headers(0, self.size, hidden=True)
                return
        shift = start - cd_offset
        if shift:
            self._issue(
                "zip.offset_shift",
                Severity.HIGH,
                Verdict.MALICIOUS,
                f"the central directory sits {shift} bytes away from where the end record says; "
                "readers that correct for a prefix and readers that do not see different data",
                offset=start,
                declared=cd_offset,
            )
        elif start + cd_size != cd_end_limit:
            gap = cd_end_limit - (start + cd_size)
            if gap > 0:
                self._scan_gap(
                    start + cd_size,
                    cd_end_limit,
                    "between the central directory and the end record",
                )
        self._parse_central(start, cd_size, count, shift)
        self.valid = True
        self._parse_locals()
        self._account(start)
        self._report_other_eocds(eocd)

    def _parse_zip64(
        self, locator: int, count: int, cd_size: int, cd_offset: int
    ) -> tuple[int, int, int, int] | None:
        self.zip64 = True
        _, _, record_offset, _ = _ZIP64_LOCATOR.unpack(self._bytes(locator, _ZIP64_LOCATOR.size))
        record = self._bytes(record_offset, _ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or record[:4] != ZIP64_EOCD_SIG:
            expected = locator - _ZIP64_EOCD.size
            record = self._bytes(expected, _ZIP64_EOCD.size)
            if len(record) < _ZIP64_EOCD.size or record[:4] != ZIP64_EOCD_SIG:
                self._issue(
                    "zip.zip64_bad_record",
                    Severity.HIGH,
                    Verdict.ERROR,
                    "the ZIP64 locator points at no ZIP64 end record",
                    offset=locator,
                )
                return None
            self._issue(
                "zip.offset_shift",
                Severity.HIGH,
                Verdict.MALICIOUS,
                "the ZIP64 end record is not where its locator says",
                offset=expected,
                declared=record_offset,
            )
            record_offset = expected
        fields = _ZIP64_EOCD.unpack(record)
        record_size, _, _, _, _, _, count64, size64, offset64 = fields[1:10]
        record_end = record_offset + 12 + record_size
        if record_end != locator:
            self._issue(
                "zip.zip64_record_size",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                "the ZIP64 end record's size does not reach its locator",
                offset=record_offset,
            )
        for name, small, big, sentinel in (
            ("entry count", count, count64, 0xFFFF),
            ("directory size", cd_size, size64, 0xFFFFFFFF),
            ("directory offset", cd_offset, offset64, 0xFFFFFFFF),
        ):
            if small != sentinel and small != big:
                self._issue(
                    "zip.eocd_mismatch",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"the end record and the ZIP64 end record disagree on the {name} "
                    f"({small} vs {big})",
                    offset=record_offset,
                )
        return count64, size64, offset64, record_offset

    # -- central directory ---------------------------------------------------------------
    def _parse_central(self, start: int, cd_size: int, count: int, shift: int) -> None:
        pos = start
        end = start + cd_size
        seen: dict[bytes, int] = {}
        index = 0
        data = self.data
        whole = self._whole
        size = self.size
        central_size = _CENTRAL.size
        unpack = _CENTRAL_FIELDS.unpack_from
        entries = self.entries
        max_entries = self._max_entries
        while pos + central_size <= size:
            sig, flags, method, crc, csize, usize, nlen, elen, clen, local_offset = unpack(
                data, pos
            )
            if sig != CENTRAL_SIG:
                break
            name_start = pos + central_size
            extra_start = name_start + nlen
            if whole is not None and extra_start + elen <= size:
                raw_name = whole[name_start:extra_start]  # in bounds: no length check needed
            else:
                raw_name = self._bytes(name_start, nlen)
                if len(raw_name) != nlen or len(self._bytes(extra_start, elen)) != elen:
                    self._issue(
                        "zip.truncated",
                        Severity.HIGH,
                        Verdict.ERROR,
                        "a central directory record runs past the end of the file",
                        offset=pos,
                    )
                    break
            # ASCII decodes the same under cp437 and UTF-8: skip the codec lookup.
            name = raw_name.decode("ascii") if raw_name.isascii() else _decode_name(raw_name, flags)
            if usize == 0xFFFFFFFF or csize == 0xFFFFFFFF or local_offset == 0xFFFFFFFF:
                extra = self._bytes(extra_start, elen) if elen else b""
                usize, csize, local_offset = _apply_zip64_extra(extra, usize, csize, local_offset)
            entry = ZipEntry(
                name, raw_name, index, local_offset + shift, method, flags, crc, csize, usize
            )
            if raw_name in seen:
                self._issue(
                    "zip.duplicate_name",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"two central directory entries are named {name!r}; readers that open by "
                    "name see only one of them",
                    member=name,
                    offset=pos,
                    first_index=seen[raw_name],
                    index=index,
                )
            else:
                seen[raw_name] = index
            if name.startswith(("/", "\\")) or (
                ".." in name and ".." in name.replace("\\", "/").split("/")
            ):
                self._issue(
                    "zip.path_traversal",
                    Severity.MEDIUM,
                    Verdict.UNKNOWN,
                    f"member name {name!r} escapes the extraction directory",
                    member=name,
                    offset=pos,
                )
            entries.append(entry)
            index += 1
            pos = extra_start + elen + clen
            if index > max_entries:
                self._issue(
                    "limit.archive_entries",
                    Severity.HIGH,
                    Verdict.ERROR,
                    f"more than {self._max_entries} central directory entries",
                    offset=pos,
                )
                break
        if index != count:
            self._issue(
                "zip.count_mismatch",
                Severity.HIGH,
                Verdict.MALICIOUS,
                f"the end record declares {count} entries but the central directory holds {index}",
                offset=start,
            )
        if pos != end:
            self._issue(
                "zip.cd_size_mismatch",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"the central directory is {pos - start} bytes, the end record says {cd_size}",
                offset=start,
            )

    # -- local headers -------------------------------------------------------------------
    def _read_local(self, offset: int) -> tuple[int, int, int, int, int, int, bytes, bytes] | None:
        if offset < 0 or offset + _LOCAL.size > self.size:
            return None
        sig, _, flags, method, _, _, crc, csize, usize, nlen, elen = _LOCAL.unpack_from(
            self.data, offset
        )
        if sig != LOCAL_SIG:
            return None
        name_start = offset + _LOCAL.size
        end = name_start + nlen + elen
        if end > self.size:
            return None
        whole = self._whole
        if whole is not None:
            name = whole[name_start : name_start + nlen]
            extra = whole[name_start + nlen : end] if elen else b""
        else:
            name = self._bytes(name_start, nlen)
            extra = self._bytes(name_start + nlen, elen)
        return flags, method, crc, csize, usize, end, name, extra

    def _parse_locals(self) -> None:
        whole = self._whole
        data = self.data
        size = self.size
        unpack = _LOCAL_FIELDS.unpack_from
        unpack_descriptor = _DESCRIPTOR.unpack_from
        for entry in self.entries:
            # Fast path: a local header that agrees with the directory in every field the
            # checks below compare raises no issue; anything else takes the full path.
            off = entry.header_offset
            if whole is not None and off >= 0 and off + _LOCAL.size <= size:
                sig, flags, method, crc, csize, usize, nlen, elen = unpack(data, off)
                name_start = off + _LOCAL.size
                data_offset = name_start + nlen + elen
                if (
                    sig == LOCAL_SIG
                    and flags == entry.flags
                    and method == entry.method
                    and method in SUPPORTED_METHODS
                    and not flags & _SUSPICIOUS_FLAGS
                    and usize != 0xFFFFFFFF
                    and csize != 0xFFFFFFFF
                    and data_offset + entry.compress_size <= size
                    and whole[name_start : name_start + nlen] == entry.raw_name
                    and (
                        flags & FLAG_DESCRIPTOR
                        or (
                            crc == entry.crc
                            and csize == entry.compress_size
                            and usize == entry.file_size
                        )
                    )
                ):
                    entry.local_ok = True
                    entry.data_offset = data_offset
                    end = data_offset + entry.compress_size
                    if flags & FLAG_DESCRIPTOR:
                        if (
                            end + 16 <= size
                            and entry.compress_size < 0xFFFFFFFF  # a 12-byte descriptor
                            and entry.file_size < 0xFFFFFFFF
                            and whole[end : end + 4] == DESCRIPTOR_SIG
                            and unpack_descriptor(data, end + 4)
                            == (entry.crc, entry.compress_size, entry.file_size)
                        ):
                            end += 16  # signed descriptor that agrees: nothing to report
                        else:
                            end = self._check_descriptor(entry, end)
                    entry.data_end = end
                    continue
            local = self._read_local(entry.header_offset)
            if local is None:
                self._issue(
                    "zip.bad_local_header",
                    Severity.HIGH,
                    Verdict.ERROR,
                    f"no local header where the central directory places {entry.name!r}",
                    member=entry.name,
                    offset=entry.header_offset,
                )
                continue
            flags, method, crc, csize, usize, data_offset, raw_name, extra = local
            entry.local_ok = True
            entry.data_offset = data_offset
            if raw_name != entry.raw_name:
                self._issue(
                    "zip.name_mismatch",
                    Severity.CRITICAL,
                    Verdict.MALICIOUS,
                    f"the local header names {_decode_name(raw_name, flags)!r} but the central "
                    f"directory names {entry.name!r} (a scanner-evasion trick)",
                    member=entry.name,
                    offset=entry.header_offset,
                    local_name=_decode_name(raw_name, flags),
                )
            suspicious_flags = (FLAG_ENCRYPTED | FLAG_PATCHED | FLAG_STRONG_ENCRYPTION) & (
                flags | entry.flags
            )
            if suspicious_flags:
                self._issue(
                    "zip.encryption_flag",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"{entry.name!r} carries flag bits {suspicious_flags:#06x} "
                    "(encryption/patch data) that PyTorch ignores but other readers refuse",
                    member=entry.name,
                    offset=entry.header_offset,
                    flags=flags,
                )
            if (flags ^ entry.flags) & ~FLAG_UTF8 & 0xFFFF:
                self._issue(
                    "zip.flag_mismatch",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"local and central flags of {entry.name!r} differ "
                    f"({flags:#06x} vs {entry.flags:#06x})",
                    member=entry.name,
                    offset=entry.header_offset,
                )
            if method != entry.method:
                self._issue(
                    "zip.method_mismatch",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"local and central compression methods of {entry.name!r} differ "
                    f"({method} vs {entry.method})",
                    member=entry.name,
                    offset=entry.header_offset,
                )
            if entry.method not in SUPPORTED_METHODS:
                self._issue(
                    "zip.unsupported_method",
                    Severity.HIGH,
                    Verdict.ERROR,
                    f"{entry.name!r} uses compression method {entry.method}, which cannot be "
                    "scanned",
                    member=entry.name,
                    offset=entry.header_offset,
                )
            usize_l, csize_l = usize, csize
            if 0xFFFFFFFF in (usize, csize):
                usize_l, csize_l, _ = _apply_zip64_extra(extra, usize, csize, 0)
            if not flags & FLAG_DESCRIPTOR and (
                crc != entry.crc or csize_l != entry.compress_size or usize_l != entry.file_size
            ):
                self._issue(
                    "zip.size_mismatch",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"local and central CRC or sizes of {entry.name!r} differ",
                    member=entry.name,
                    offset=entry.header_offset,
                    local={"crc": crc, "csize": csize_l, "usize": usize_l},
                    central={
                        "crc": entry.crc,
                        "csize": entry.compress_size,
                        "usize": entry.file_size,
                    },
                )
            end = data_offset + entry.compress_size
            if end > self.size:
                self._issue(
                    "zip.truncated",
                    Severity.HIGH,
                    Verdict.ERROR,
                    f"the data of {entry.name!r} runs past the end of the file",
                    member=entry.name,
                    offset=data_offset,
                )
                entry.data_end = self.size
                continue
            if flags & FLAG_DESCRIPTOR:
                end = self._check_descriptor(entry, end)
            entry.data_end = end

    def _check_descriptor(self, entry: ZipEntry, pos: int) -> int:
        """Validate the data descriptor after ``entry``'s data; return where it ends."""
        wide = self.zip64 and (entry.compress_size >= 0xFFFFFFFF or entry.file_size >= 0xFFFFFFFF)
        has_sig = self._bytes(pos, 4) == DESCRIPTOR_SIG
        body = pos + (4 if has_sig else 0)
        layout = _DESCRIPTOR_WIDE if wide else _DESCRIPTOR
        if body + layout.size > self.size or body < 0:
            self._issue(
                "zip.descriptor_mismatch",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"the data descriptor of {entry.name!r} is missing",
                member=entry.name,
                offset=pos,
            )
            return pos
        crc, csize, usize = layout.unpack_from(self.data, body)
        if (crc, csize, usize) != (entry.crc, entry.compress_size, entry.file_size):
            if not wide and self.zip64:
                alt = self._bytes(body, struct.calcsize("<IQQ"))
                if len(alt) == struct.calcsize("<IQQ") and struct.unpack("<IQQ", alt) == (
                    entry.crc,
                    entry.compress_size,
                    entry.file_size,
                ):
                    return body + len(alt)
            self._issue(
                "zip.descriptor_mismatch",
                Severity.HIGH,
                Verdict.MALICIOUS,
                f"the data descriptor of {entry.name!r} disagrees with the central directory",
                member=entry.name,
                offset=pos,
                descriptor={"crc": crc, "csize": csize, "usize": usize},
            )
        return body + layout.size

    # -- byte accounting: overlaps, gaps, hidden entries ---------------------------------
    def _account(self, cd_start: int) -> None:
        entries = self.entries
        # (start, end, directory position): ties keep directory order, as a stable sort
        # on (start, end) would, without a key function per entry.
        spans = sorted(
            [
                (e.header_offset, e.data_end, i)
                for i, e in enumerate(entries)
                if e.local_ok and e.data_end >= 0
            ]
        )
        cursor = 0
        previous: ZipEntry | None = None
        for start, end, position in spans:
            entry = entries[position]
            if start < cursor and previous is not None:
                self._issue(
                    "zip.overlapping_entries",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"{entry.name!r} overlaps {previous.name!r}: the same bytes are read as two "
                    "members",
                    member=entry.name,
                    offset=start,
                    other=previous.name,
                )
            elif start > cursor:
                if previous is None:
                    self.prefix_end = start
                    self._issue(
                        "zip.prefix_data",
                        Severity.MEDIUM,
                        Verdict.UNKNOWN,
                        f"{start} bytes precede the first zip record; readers that check the "
                        "file's first bytes treat it as something else (a polyglot)",
                        offset=0,
                        length=start,
                    )
                    self._scan_gap(0, start, "before the first record", prefix=True)
                else:
                    self._scan_gap(cursor, start, f"after {previous.name!r}")
            if end > cursor:
                cursor = end
                previous = entry
        if spans and cd_start > cursor:
            self._scan_gap(cursor, cd_start, "between the last member and the central directory")
        elif spans and cd_start < cursor:
            self._issue(
                "zip.overlapping_entries",
                Severity.HIGH,
                Verdict.MALICIOUS,
                "member data runs into the central directory",
                offset=cd_start,
            )
        if not spans and cd_start > 0:
            self.prefix_end = cd_start
            self._issue(
                "zip.prefix_data",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"{cd_start} bytes precede the central directory of an archive without members",
                offset=0,
                length=cd_start,
            )
            self._scan_gap(0, cd_start, "before the central directory", prefix=True)

    def _scan_gap(self, start: int, end: int, where: str, *, prefix: bool = False) -> None:
        """Look for local headers in unaccounted bytes; report the gap either way."""
        found = self._walk_local_headers(start, end, hidden=True)
        if not found and not prefix:
            self._issue(
                "zip.unaccounted_bytes",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"{end - start} bytes {where} belong to no member",
                offset=start,
                length=end - start,
            )

    def _walk_local_headers(self, start: int, end: int, *, hidden: bool) -> int:
        """Parse local headers found in ``[start, end)``; each becomes a hidden entry."""
        if end - start > _GAP_SCAN_LIMIT:
            self._issue(
                "zip.unaccounted_bytes",
                Severity.HIGH,
                Verdict.ERROR,
                f"{end - start} unaccounted bytes are too many to search for hidden entries",
                offset=start,
                length=end - start,
            )
            return 0
        region = bytes(self.data[start:end])
        found = 0
        pos = region.find(LOCAL_SIG)
        while pos >= 0 and hidden:
            offset = start + pos
            local = self._read_local(offset)
            if local is None:
                pos = region.find(LOCAL_SIG, pos + 1)
                continue
            flags, method, crc, csize, usize, data_offset, raw_name, extra = local
            usize, csize, _ = _apply_zip64_extra(extra, usize, csize, 0)
            name = _decode_name(raw_name, flags)
            entry = ZipEntry(
                name=name,
                raw_name=raw_name,
                index=-1,
                header_offset=offset,
                method=method,
                flags=flags,
                crc=crc,
                compress_size=csize,
                file_size=usize,
                data_offset=data_offset,
                data_end=min(data_offset + csize, self.size),
                local_ok=True,
            )
            self.hidden.append(entry)
            found += 1
            self._issue(
                "zip.hidden_entry",
                Severity.HIGH,
                Verdict.MALICIOUS,
                f"local entry {name!r} is not listed in the central directory (hidden from "
                "readers that trust the directory)",
                member=name,
                offset=offset,
            )
            advance = max(data_offset + csize - start, pos + 1)
            pos = region.find(LOCAL_SIG, advance)
        return found

    # -- member data ---------------------------------------------------------------------
    def raw(self, entry: ZipEntry) -> memoryview:
        """The member's stored (possibly compressed) bytes, zero-copy."""
        if entry.data_offset < 0:
            return memoryview(b"")
        end = min(entry.data_offset + entry.compress_size, self.size)
        return self.data[entry.data_offset : end]

    def raw_bytes(self, entry: ZipEntry) -> bytes:
        """:meth:`raw` as ``bytes`` (one slice of the underlying buffer when possible)."""
        if entry.data_offset < 0:
            return b""
        end = min(entry.data_offset + entry.compress_size, self.size)
        whole = self._whole
        if whole is not None:
            return whole[entry.data_offset : end]
        return bytes(self.data[entry.data_offset : end])

    def read(self, entry: ZipEntry, *, max_bytes: int) -> memoryview | bytes:
        """The member's content, decompressed; at most ``max_bytes`` or :class:`LimitExceeded`."""
        raw = self.raw(entry)
        if entry.method == METHOD_STORED:
            if len(raw) > max_bytes:
                raise LimitExceeded(f"{entry.name}: {len(raw)} bytes exceeds {max_bytes}")
            return raw
        return decompress(entry.method, raw, max_bytes=max_bytes, name=entry.name)

    def head(self, entry: ZipEntry, n: int) -> bytes:
        """The first ``n`` content bytes (for sniffing), decompressing only what is needed."""
        raw = self.raw(entry)
        if entry.method == METHOD_STORED:
            return bytes(raw[:n])
        try:
            return bytes(decompress(entry.method, raw, max_bytes=n, name=entry.name, partial=True))
        except (LimitExceeded, ValueError):
            return b""


def decompress(
    method: int, raw: memoryview | bytes, *, max_bytes: int, name: str, partial: bool = False
) -> bytes:
    """Inflate one member with an output cap; ``partial`` returns the first ``max_bytes``."""
    if method == METHOD_DEFLATED:
        inflater: Any = zlib.decompressobj(-15)
        try:
            out = inflater.decompress(raw, max_bytes + 1)
        except zlib.error as exc:
            raise ValueError(f"{name}: corrupt deflate data: {exc}") from exc
    elif method == METHOD_BZIP2:
        import bz2

        try:
            out = bz2.BZ2Decompressor().decompress(bytes(raw), max_bytes + 1)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{name}: corrupt bzip2 data: {exc}") from exc
    elif method == METHOD_LZMA:
        out = _zip_lzma(bytes(raw), max_bytes + 1, name)
    elif method == METHOD_STORED:
        out = bytes(raw[: max_bytes + 1])
    else:
        raise ValueError(f"{name}: unsupported compression method {method}")
    if len(out) > max_bytes:
        if partial:
            return bytes(out[:max_bytes])
        raise LimitExceeded(f"{name}: decompresses to more than {max_bytes} bytes")
    return bytes(out)


def _zip_lzma(raw: bytes, max_length: int, name: str) -> bytes:
    """ZIP's LZMA: a 4-byte version/size prefix, then LZMA1 properties and raw data."""
    import lzma

    if len(raw) < 4:
        raise ValueError(f"{name}: truncated LZMA header")
    (props_size,) = struct.unpack("<H", raw[2:4])
    props = raw[4 : 4 + props_size]
    try:
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # type: ignore[attr-defined]
        decoder = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
        return decoder.decompress(raw[4 + props_size :], max_length)
    except (lzma.LZMAError, ValueError) as exc:
        raise ValueError(f"{name}: corrupt LZMA data: {exc}") from exc


def _apply_zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF placeholders with the ZIP64 extra field's 8-byte values."""
    if usize != 0xFFFFFFFF and csize != 0xFFFFFFFF and offset != 0xFFFFFFFF:
        return usize, csize, offset  # nothing to replace (the common case)
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            body = extra[pos + 4 : pos + 4 + size]
            cursor = 0
            values = []
            while cursor + 8 <= len(body):
                values.append(struct.unpack_from("<Q", body, cursor)[0])
                cursor += 8
            if usize == 0xFFFFFFFF and values:
                usize = values.pop(0)
            if csize == 0xFFFFFFFF and values:
                csize = values.pop(0)
            if offset == 0xFFFFFFFF and values:
                offset = values.pop(0)
            break
        pos += 4 + size
    return usize, csize, offset


def crc_ok(data: bytes | memoryview, expected: int) -> bool:
    """CRC-32 check of member content (done for pickle and small members only)."""
    return (zlib.crc32(data) & 0xFFFFFFFF) == expected
