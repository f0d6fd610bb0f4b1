"""Containers: zip (generic, ``.npz`` and PyTorch), tar, and gzip/bz2/xz/lzma/zlib streams.

Every member is routed by content, whatever its name, so a pickle stored as
``data.txt`` or a zip inside a zip is still scanned. Nesting depth, the total of
decompressed bytes and the compression ratio are bounded per top-level file
(:class:`~trainguard.scan.formats.context.ScanContext`); exceeding a bound is a
finding with verdict ``error``, never a silent skip.

CRC choice: CRC-32 is verified for every member that is read (pickles, nested
archives, ``.npy`` members, small members), not for PyTorch tensor storages. A
storage is raw bytes handed to ``torch.UntypedStorage``, never unpickled, and
checking its CRC would make the scan cost grow with the size of the weights;
weight integrity is the manifest's job (``trainguard manifest``).
"""

from __future__ import annotations

import io
import mmap
import struct
import zlib
from typing import Any, Final

from trainguard.core.errors import LimitExceeded
from trainguard.core.findings import Severity, Verdict
from trainguard.scan.formats.context import ScanContext, limit
from trainguard.scan.formats.zipreader import EOCD_SIG, LOCAL_SIG, ZipArchive, ZipEntry, crc_ok
from trainguard.scan.memo import (
    MEMBER_MAX_BYTES,
    SMALL_MEMBER_KEY_BYTES,
    MemberResult,
    SmallMemberKey,
    digest,
)
from trainguard.scan.sniff import SNIFF_BYTES, Kind, sniff

_SMALL_MEMBER: Final = 1 << 20
"""Members up to this size are CRC-checked even when they hold no pickle."""
_CHUNK: Final = 1 << 20


def _limit_finding(ctx: ScanContext, exc: LimitExceeded, *, member: str | None) -> None:
    ctx.report(
        "limit.exceeded",
        Severity.HIGH,
        Verdict.ERROR,
        f"scan stopped at a resource limit: {exc}",
        member=member,
    )


# -- zip ---------------------------------------------------------------------------------
def split_concatenated(data: memoryview) -> list[tuple[int, int]]:
    """Segments of a buffer that is several complete zips back to back, else ``[]``.

    ``torch.distributed.checkpoint`` shards (``.distcp``) are written this way: one
    ``torch.save`` zip per item, concatenated. Each segment must be a clean zip on its
    own and together they must cover the buffer exactly; otherwise the buffer is one
    zip (and the extra records are reported as the differentials they are).
    """
    segments: list[tuple[int, int]] = []
    pos = 0
    size = len(data)
    while pos < size:
        if bytes(data[pos : pos + 4]) != LOCAL_SIG:
            return []
        found = bytes(data[pos:]).find(EOCD_SIG)
        if found < 0 or pos + found + 22 > size:
            return []
        eocd = pos + found
        (comment_len,) = struct.unpack("<H", bytes(data[eocd + 20 : eocd + 22]))
        end = eocd + 22 + comment_len
        segments.append((pos, end))
        pos = end
    if len(segments) < 2 or pos != size:
        return []
    for start, end in segments:
        part = ZipArchive(data[start:end])
        if not part.valid or part.issues or part.hidden:
            return []
    return segments


def scan_zip(ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int) -> str:
    """Scan a zip: its structure, then every member by content."""
    from trainguard.scan.formats.dispatch import scan_buffer
    from trainguard.scan.formats.torch_zip import TorchZip

    archive = ZipArchive(data, max_entries=limit(ctx.limits, "max_archive_entries", 100_000))
    if not archive.valid or archive.issues or archive.hidden:
        # Several zips back to back read as one archive with something unexplained (a
        # prefix, shifted offsets, unaccounted bytes); one that accounts for every byte
        # from offset 0 is what loaders read, so only the former is split and re-scanned.
        segments = split_concatenated(data) if _has_inner_end_record(data) else []
        if segments:
            for start, end in segments:
                child = ctx.nested(_join(member, f"@{start}"))
                scan_buffer(child, data[start:end], member=None, base_offset=base_offset + start)
            ctx.verdict(Verdict.SAFE)
            return "zip-concatenation"
    for issue in archive.issues:
        where = issue.member if issue.member is None else _join(member, issue.member)
        ctx.report(
            issue.rule,
            issue.severity,
            issue.verdict,
            issue.message,
            member=where if where is not None else member,
            offset=None if issue.offset is None else base_offset + issue.offset,
            evidence=issue.evidence,
        )
    if archive.prefix_end:
        _scan_prefix(ctx, data[: archive.prefix_end], member=member, base_offset=base_offset)
    if not archive.valid:
        for entry in archive.hidden:
            _scan_member(ctx, archive, entry, member=member, base_offset=base_offset)
        return "zip"
    torch = TorchZip.detect(archive)
    skip: set[int] = set()
    fmt = "zip"
    if torch is not None:
        fmt = torch.scan(ctx, member=member, base_offset=base_offset)
        skip = torch.handled
    npy_members = 0
    for entry in (*archive.entries, *archive.hidden):
        if id(entry) in skip or entry.is_dir:
            continue
        kind = _scan_member(ctx, archive, entry, member=member, base_offset=base_offset)
        npy_members += kind is Kind.NPY
    if torch is None and npy_members and npy_members == len(archive.entries):
        fmt = "numpy-npz"
    ctx.verdict(Verdict.SAFE)
    return fmt


def _has_inner_end_record(data: memoryview) -> bool:
    """Whether an end-record signature lies before the last 22 bytes (a cheap pre-check
    before trying to split the buffer into several zips back to back).

    Buffers of 1 MiB or more are searched in their last 64 KiB only, where a reader
    looks for the end record: a mapped multi-gigabyte file is not read through.
    """
    size = len(data)
    start = 0 if size < (1 << 20) else max(0, size - (1 << 16) - 22)
    end = max(0, size - 22)
    whole = data.obj if isinstance(data, memoryview) else data
    if isinstance(whole, bytes | mmap.mmap) and len(whole) == size and data.contiguous:
        # rfind: same answer as find, and measurably faster on tensor bytes
        return whole.rfind(EOCD_SIG, start, end) >= 0  # searched in place, no copy
    return bytes(data[start:end]).rfind(EOCD_SIG) >= 0


def _join(outer: str | None, inner: str) -> str:
    return inner if outer is None else f"{outer}!{inner}"


def _scan_prefix(
    ctx: ScanContext, prefix: memoryview, *, member: str | None, base_offset: int
) -> None:
    """Bytes before the first zip record: a loader that sniffs the start sees these."""
    from trainguard.scan.formats.dispatch import looks_like_pickle

    head = bytes(prefix[:SNIFF_BYTES])
    kind = sniff(head, len(prefix))
    if kind is Kind.PICKLE or (kind is Kind.MAYBE_PICKLE and looks_like_pickle(ctx, prefix)):
        ctx.report(
            "zip.polyglot",
            Severity.CRITICAL,
            Verdict.MALICIOUS,
            "a pickle precedes the zip: torch.load unpickles it (the file does not start with a "
            "zip header) while zip readers see only the archive",
            member=member,
            offset=base_offset,
        )
        ctx.pickle_stream(prefix, member=member, base_offset=base_offset, allow_trailing=True)


def read_member(
    ctx: ScanContext, archive: ZipArchive, entry: ZipEntry, *, member: str | None
) -> memoryview | None:
    """A member's content within limits, CRC-checked; None (with a finding) on failure."""
    name = _join(member, entry.name)
    stored = entry.method == 0
    cap = (
        limit(ctx.limits, "max_member_size", 1 << 40)
        if stored
        else ctx.inflate_cap(entry.compress_size)
    )
    try:
        content = archive.read(entry, max_bytes=cap)
        if not stored:
            ctx.charge(len(content), len(content), entry.compress_size, name)
    except LimitExceeded as exc:
        _limit_finding(ctx, exc, member=name)
        return None
    except ValueError as exc:
        ctx.report(
            "zip.corrupt_member",
            Severity.HIGH,
            Verdict.ERROR,
            f"member cannot be decompressed: {exc}",
            member=name,
        )
        return None
    if entry.method != 0 and len(content) != entry.file_size and entry.in_central_directory:
        ctx.report(
            "zip.size_mismatch",
            Severity.HIGH,
            Verdict.MALICIOUS,
            f"member decompresses to {len(content)} bytes, the directory says {entry.file_size}",
            member=name,
        )
    if not crc_ok(content, entry.crc) and not (entry.flags & 0x0008 and entry.index < 0):
        ctx.report(
            "zip.bad_crc",
            Severity.HIGH,
            Verdict.MALICIOUS,
            "CRC-32 does not match the member's content: it was changed after the archive was "
            "written (PyTorch does not check CRCs, strict readers refuse the member)",
            member=name,
        )
    return memoryview(content) if isinstance(content, bytes) else content


def _scan_member(
    ctx: ScanContext, archive: ZipArchive, entry: ZipEntry, *, member: str | None, base_offset: int
) -> Kind:
    """Sniff one member and scan it when it is anything but plain data.

    A small stored member (``version``, ``byteorder``, ``.data/serialization_id``...)
    whose bytes, CRC and declared size were already scanned in this run without a
    finding and without decompressing anything is replayed from the memo: every check
    below is a function of exactly those inputs (and of the nesting depth), and a
    finding-free scan only ever added verdicts and format names.
    """
    memo = ctx.usable_memo()
    if (
        memo is None
        or entry.method != 0
        or entry.data_offset < 0
        or entry.compress_size > SMALL_MEMBER_KEY_BYTES
        or entry.file_size > SMALL_MEMBER_KEY_BYTES
    ):
        return _scan_member_full(ctx, archive, entry, member=member, base_offset=base_offset)
    key: SmallMemberKey = (
        archive.raw_bytes(entry),
        entry.crc,
        entry.file_size,
        bool(entry.flags & 0x0008 and entry.index < 0),
        ctx.depth,
    )
    replay = memo.small_member(key)
    if replay is not None:
        ctx.verdicts.extend(replay[1].verdicts)
        ctx.formats.extend(replay[1].formats)
        return replay[0]
    marks = (len(ctx.findings), len(ctx.verdicts), len(ctx.formats), ctx.budget.unpacked)
    kind = _scan_member_full(ctx, archive, entry, member=member, base_offset=base_offset)
    if len(ctx.findings) == marks[0] and ctx.budget.unpacked == marks[3]:
        result = MemberResult(tuple(ctx.verdicts[marks[1] :]), tuple(ctx.formats[marks[2] :]))
        memo.store_small_member(key, kind, result)
    return kind


def _scan_member_full(
    ctx: ScanContext, archive: ZipArchive, entry: ZipEntry, *, member: str | None, base_offset: int
) -> Kind:
    """:func:`_scan_member` without the small-member replay."""
    from trainguard.scan.formats.dispatch import is_inert_text, scan_buffer

    ctx.check_deadline()
    if entry.method == 0 and entry.file_size <= _SMALL_MEMBER:
        # A small stored member is read whatever it holds; its head is its first bytes.
        content = read_member(ctx, archive, entry, member=member)
        head = (
            bytes(content[:SNIFF_BYTES])
            if content is not None
            else archive.head(entry, SNIFF_BYTES)
        )
        kind = sniff(head, entry.file_size)
    else:
        head = archive.head(entry, SNIFF_BYTES)
        kind = sniff(head, entry.file_size)
        if kind in (Kind.DATA, Kind.EMPTY) and entry.file_size > _SMALL_MEMBER:
            return kind
        content = read_member(ctx, archive, entry, member=member)
    if content is None or kind in (Kind.DATA, Kind.EMPTY):
        return kind
    depth = ctx.depth + 1
    if (
        kind is Kind.MAYBE_PICKLE
        and len(content) <= MEMBER_MAX_BYTES
        and depth <= limit(ctx.limits, "max_archive_depth", 5)
        and is_inert_text(bytes(content))
    ):
        # exactly what scan_buffer would do in a child context (see is_inert_text)
        ctx.verdicts.append(Verdict.SAFE)
        ctx.formats.append("data")
        return kind
    offset = base_offset + entry.data_offset if entry.method == 0 else 0
    memo = ctx.usable_memo() if len(content) <= MEMBER_MAX_BYTES else None
    key = b""
    if memo is not None and depth <= limit(ctx.limits, "max_archive_depth", 5):
        key = digest(content)
        replay = memo.member(key, depth)
        if replay is not None:
            ctx.verdicts.extend(replay.verdicts)
            ctx.formats.extend(replay.formats)
            return kind
    try:
        child = ctx.nested(_join(member, entry.name))
    except LimitExceeded as exc:
        _limit_finding(ctx, exc, member=_join(member, entry.name))
        return kind
    if not key or memo is None:
        scan_buffer(child, content, member=None, base_offset=offset)
        return kind
    marks = (len(ctx.findings), len(ctx.verdicts), len(ctx.formats), ctx.budget.unpacked)
    scan_buffer(child, content, member=None, base_offset=offset)
    if len(ctx.findings) == marks[0] and ctx.budget.unpacked == marks[3]:
        verdicts = tuple(ctx.verdicts[marks[1] :])
        memo.store_member(key, depth, MemberResult(verdicts, tuple(ctx.formats[marks[2] :])))
    return kind


# -- single-stream compression -----------------------------------------------------------
def _decompressor(kind: Kind) -> Any:
    if kind is Kind.GZIP:
        return zlib.decompressobj(31)
    if kind is Kind.ZLIB:
        return zlib.decompressobj(15)
    if kind is Kind.BZIP2:
        import bz2

        return bz2.BZ2Decompressor()
    import lzma  # imported on use: most scans never meet an xz or lzma stream

    if kind is Kind.XZ:
        return lzma.LZMADecompressor(lzma.FORMAT_XZ)
    return lzma.LZMADecompressor(lzma.FORMAT_ALONE)


def decompress_stream(
    ctx: ScanContext, kind: Kind, data: memoryview, what: str
) -> tuple[bytes, int]:
    """Inflate a compressed stream within the budget; return ``(content, trailing bytes)``.

    Concatenated gzip/bz2/xz members are followed, as their command-line tools do.
    """
    out = bytearray()
    remaining: bytes | memoryview = data
    consumed_total = 0
    cap = limit(ctx.limits, "max_member_size", 4 << 30)
    while True:
        engine = _decompressor(kind)
        pending = remaining
        while True:
            ctx.check_deadline()
            chunk = engine.decompress(pending, _CHUNK)
            out += chunk
            if len(out) > cap:
                raise LimitExceeded(f"{what}: decompresses to more than {cap} bytes")
            ctx.charge(len(chunk), len(out), max(1, len(data)), what)
            if engine.eof:
                break
            pending = b""
            if not chunk and getattr(engine, "needs_input", True) and not _has_tail(engine):
                raise ValueError(f"{what}: compressed stream is truncated")
        unused = engine.unused_data
        consumed_total = len(data) - len(unused)
        if (
            unused
            and kind in (Kind.GZIP, Kind.BZIP2, Kind.XZ)
            and sniff(unused[:16], len(unused)) is kind
        ):
            remaining = unused
            continue
        return bytes(out), len(data) - consumed_total


def _has_tail(engine: Any) -> bool:
    tail = getattr(engine, "unconsumed_tail", b"")
    return bool(tail)


def scan_compressed(ctx: ScanContext, kind: Kind, data: memoryview, *, member: str | None) -> str:
    """A gzip/bz2/xz/lzma/zlib wrapper: inflate within limits and scan the content."""
    import lzma

    from trainguard.scan.formats.dispatch import scan_buffer

    name = member or "(stream)"
    try:
        content, trailing = decompress_stream(ctx, kind, data, name)
    except LimitExceeded as exc:
        _limit_finding(ctx, exc, member=member)
        return kind.value
    except (ValueError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        if kind is Kind.ZLIB:
            # 0x78 is also an ordinary first byte; not a zlib stream after all.
            from trainguard.scan.formats.dispatch import scan_pickle_file

            return scan_pickle_file(
                ctx,
                Kind.MAYBE_PICKLE,
                bytes(data[:SNIFF_BYTES]),
                data,
                member=member,
                base_offset=0,
            )
        ctx.report(
            "archive.corrupt",
            Severity.HIGH,
            Verdict.ERROR,
            f"{kind.value} stream cannot be decompressed: {exc}",
            member=member,
        )
        return kind.value
    if trailing:
        ctx.report(
            "archive.trailing_data",
            Severity.MEDIUM,
            Verdict.UNKNOWN,
            f"{trailing} bytes follow the {kind.value} stream",
            member=member,
            offset=len(data) - trailing,
        )
    try:
        child = ctx.nested(kind.value)
    except LimitExceeded as exc:
        _limit_finding(ctx, exc, member=member)
        return kind.value
    # A single-stream wrapper adds depth but no name: members read as in the inner file.
    child.prefix = ctx.prefix if member is None else f"{ctx.prefix}{member}!"
    inner_fmt = scan_buffer(child, memoryview(content), member=None)
    return f"{kind.value}+{inner_fmt}"


# -- tar ---------------------------------------------------------------------------------
class _MemoryFile(io.RawIOBase):
    """A seekable read-only file over a memoryview, so tarfile never copies the buffer."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: len(self._data)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        chunk = self._data[self._pos : self._pos + len(buffer)]
        n = len(chunk)
        buffer[:n] = chunk
        self._pos += n
        return n


def scan_tar(ctx: ScanContext, data: memoryview, *, member: str | None) -> str:
    """A tar archive: the legacy PyTorch tar layout, or any tar, member by member."""
    import tarfile

    from trainguard.scan.formats.dispatch import scan_buffer

    members: dict[str, tuple[memoryview, int]] = {}
    max_entries = limit(ctx.limits, "max_archive_entries", 100_000)
    try:
        with tarfile.open(fileobj=_MemoryFile(data), mode="r:") as tar:  # type: ignore[arg-type]
            for count, info in enumerate(tar):
                if count >= max_entries:
                    raise LimitExceeded(f"more than {max_entries} tar members")
                ctx.check_deadline()
                name = _join(member, info.name)
                if info.issym() or info.islnk():
                    ctx.report(
                        "tar.link_member",
                        Severity.MEDIUM,
                        Verdict.UNKNOWN,
                        f"tar member links to {info.linkname!r}",
                        member=name,
                    )
                    continue
                if not info.isfile():
                    continue
                start, end = info.offset_data, info.offset_data + info.size
                if end > len(data):
                    ctx.report(
                        "tar.truncated",
                        Severity.HIGH,
                        Verdict.ERROR,
                        "tar member runs past the end of the archive",
                        member=name,
                    )
                    continue
                if info.name in members:
                    ctx.report(
                        "tar.duplicate_name",
                        Severity.HIGH,
                        Verdict.MALICIOUS,
                        "two tar members share this name; extraction keeps the last one",
                        member=name,
                    )
                    name = f"{info.name}#{count}"
                else:
                    name = info.name
                members[name] = (data[start:end], start)
    except LimitExceeded as exc:
        _limit_finding(ctx, exc, member=member)
        return "tar"
    except (tarfile.TarError, EOFError, ValueError) as exc:
        ctx.report(
            "tar.corrupt", Severity.HIGH, Verdict.ERROR, f"tar cannot be read: {exc}", member=member
        )
        return "tar"
    legacy = {"pickle", "storages", "tensors"} <= members.keys()
    for name, (content, start) in members.items():
        try:
            child = ctx.nested(_join(member, name))
        except LimitExceeded as exc:
            _limit_finding(ctx, exc, member=_join(member, name))
            continue
        if legacy and name in ("storages", "tensors"):
            continue
        scan_buffer(child, content, member=None, base_offset=start)
    if legacy:
        from trainguard.scan.formats.torch_legacy import check_legacy_tar

        check_legacy_tar(ctx, {k: v[0] for k, v in members.items()}, member=member)
        return "torch-legacy-tar"
    ctx.verdict(Verdict.SAFE)
    return "tar"
