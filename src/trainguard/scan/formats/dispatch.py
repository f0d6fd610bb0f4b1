"""Route a buffer to the scanner for its format, recursively for container members.

Routing is by content (:mod:`trainguard.scan.sniff`). Whatever is not recognised
is still offered to the pickle machine, because ``torch.load`` and ``np.load``
unpickle anything that is neither a zip nor an ``.npy``: a buffer counts as a
pickle when the machine parses it to STOP, or when it reaches a dangerous global
before failing (the "broken pickle" trick, where the payload runs first and the
stream breaks afterwards).
"""

from __future__ import annotations

import re
from typing import Final

from trainguard.core.errors import LimitExceeded
from trainguard.core.findings import Severity, Verdict
from trainguard.scan.formats.context import ScanContext
from trainguard.scan.sniff import SNIFF_BYTES, Kind, is_torch_legacy, sniff

_QUICK_REJECT_BYTES: Final = 1 << 16
EOCD_SIGNATURE: Final = b"PK\x05\x06"
"""Zip end-record signature (as ``zipreader.EOCD_SIG``, without importing the reader)."""
_IDENT: Final = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def scan_buffer(
    ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int = 0
) -> str:
    """Scan ``data`` (a whole file or one container member); return its format name."""
    ctx.check_deadline()
    head = bytes(data[:SNIFF_BYTES])
    kind = sniff(head, len(data))
    fmt = _route(ctx, kind, head, data, member=member, base_offset=base_offset)
    if kind is not Kind.ZIP and kind is not Kind.EMPTY:
        _zip_polyglot(ctx, data, member=member, base_offset=base_offset)
    ctx.formats.append(fmt)
    return fmt


def _zip_polyglot(
    ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int
) -> None:
    """A buffer of another format that zip readers also open (they search from the end).

    ``torch.load`` and ``np.load`` look at the first bytes, ``zipfile`` at the end
    record: a file that is both is built so that different tools see different
    content. The zip side is scanned too.
    """
    from trainguard.scan.formats.zipreader import EOCD_SIG, ZipArchive

    tail = bytes(data[max(0, len(data) - (1 << 16) - 22) :])
    if EOCD_SIG not in tail:
        return
    archive = ZipArchive(data)
    if not archive.valid or not archive.entries:
        return
    ctx.report(
        "zip.polyglot",
        Severity.CRITICAL,
        Verdict.MALICIOUS,
        "the file is also a zip archive (its end record is at the end): loaders that sniff the "
        "first bytes and zip readers see different content",
        member=member,
        offset=base_offset,
    )
    from trainguard.scan.formats.archive import scan_zip

    scan_zip(ctx, data, member=member, base_offset=base_offset)


def _route(
    ctx: ScanContext,
    kind: Kind,
    head: bytes,
    data: memoryview,
    *,
    member: str | None,
    base_offset: int,
) -> str:
    if kind is Kind.EMPTY:
        ctx.verdict(Verdict.SAFE)
        return "empty"
    if kind is Kind.ZIP:
        from trainguard.scan.formats.archive import scan_zip

        return scan_zip(ctx, data, member=member, base_offset=base_offset)
    if kind is Kind.NPY:
        from trainguard.scan.formats.npy import scan_npy

        scan_npy(ctx, data, member=member, base_offset=base_offset)
        return "numpy-npy"
    if kind is Kind.SAFETENSORS:
        from trainguard.scan.formats.safetensors_header import scan_safetensors

        scan_safetensors(ctx, data, member=member)
        return "safetensors"
    if kind in (Kind.GZIP, Kind.BZIP2, Kind.XZ, Kind.LZMA, Kind.ZLIB):
        from trainguard.scan.formats.archive import scan_compressed

        return scan_compressed(ctx, kind, data, member=member)
    if kind is Kind.TAR:
        from trainguard.scan.formats.archive import scan_tar

        return scan_tar(ctx, data, member=member)
    if kind in (Kind.SEVENZIP, Kind.LZ4, Kind.ZSTD):
        ctx.report(
            "archive.unsupported",
            Severity.HIGH,
            Verdict.ERROR,
            f"{kind.value} container: its members cannot be scanned; unpack it and scan the "
            "contents",
            member=member,
            offset=base_offset,
        )
        return kind.value
    if kind is Kind.PICKLE or kind is Kind.MAYBE_PICKLE:
        return scan_pickle_file(ctx, kind, head, data, member=member, base_offset=base_offset)
    _salvage(ctx, data, member=member, base_offset=base_offset)
    return "data"


def _is_text(data: memoryview) -> bool:
    window = bytes(data[: 1 << 16])
    if b"\0" in window:
        return False
    try:
        window.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(window) - 4  # a character cut by the window edge
    return True


def _salvage(ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int) -> None:
    """Unrecognised binary data: still look for dangerous global names in it.

    Nothing we know of loads such bytes, but a damaged or disguised container can
    still hold a pickle (a zip whose signature was broken, a custom loader that
    seeks to an offset). A dangerous name in binary data makes the file
    ``unknown`` rather than ``safe``; plain text is exempt (documentation that
    mentions ``os.system`` is not a pickle).
    """
    if _is_text(data):
        ctx.verdict(Verdict.SAFE)
        return
    from trainguard.scan.picklevm.machine import salvage_names
    from trainguard.scan.policy import DEFAULT_POLICY

    policy = ctx.policy or DEFAULT_POLICY
    for module, name, position in salvage_names(data, 0, len(data)):
        if policy.classify(module, name).verdict is Verdict.MALICIOUS:
            ctx.report(
                "scan.embedded_dangerous_name",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"unrecognised binary data names {module}.{name}, a dangerous global; it may "
                "be a damaged or disguised pickle",
                member=member,
                offset=base_offset + position,
                global_name=f"{module}.{name}",
            )
            return
    ctx.verdict(Verdict.SAFE)


def scan_pickle_file(
    ctx: ScanContext,
    kind: Kind,
    head: bytes,
    data: memoryview,
    *,
    member: str | None,
    base_offset: int,
) -> str:
    """A buffer that starts like a pickle: legacy torch, joblib, DCP metadata or plain."""
    if is_torch_legacy(head):
        from trainguard.scan.formats.torch_legacy import scan_torch_legacy

        scan_torch_legacy(ctx, data, member=member, base_offset=base_offset)
        return "torch-legacy"
    if kind is Kind.MAYBE_PICKLE and not looks_like_pickle(ctx, data):
        _salvage(ctx, data, member=member, base_offset=base_offset)
        return "data"
    from trainguard.scan.formats.joblib import has_joblib_markers, scan_joblib

    if has_joblib_markers(data):
        scan_joblib(ctx, data, member=member, base_offset=base_offset)
        return "joblib"
    from trainguard.scan.formats.dcp import is_dcp_metadata, scan_dcp_metadata

    if is_dcp_metadata(data):
        scan_dcp_metadata(ctx, data, member=member, base_offset=base_offset)
        return "dcp-metadata"
    from trainguard.scan.formats.torch_legacy import scan_stacked_pickles

    scan_stacked_pickles(ctx, data, member=member, base_offset=base_offset)
    return "pickle"


def is_inert_text(raw: bytes) -> bool:
    """True when scanning ``raw`` (sniffed as a protocol-0 pickle) can only find "data".

    Such bytes fail :func:`looks_like_pickle`'s quick reject (no newline, no ``.``, no
    byte >= 0x80: nothing can be imported, STOP is never reached), are text (no NUL,
    so :func:`_salvage` calls them safe) and hold no end-record signature (no zip
    polyglot): :func:`scan_buffer` would add one ``safe`` verdict and the format
    ``data``, nothing else. Metadata members such as ``.data/serialization_id`` (a
    decimal number, different in every checkpoint) take this shortcut.
    """
    return (
        len(raw) <= _QUICK_REJECT_BYTES
        and b"\n" not in raw
        and b"." not in raw
        and b"\0" not in raw
        and raw.isascii()
        and EOCD_SIGNATURE not in raw
    )


def looks_like_pickle(ctx: ScanContext, data: memoryview) -> bool:
    """Whether a buffer without a PROTO header would be unpickled to any effect.

    True when the machine parses it to STOP, or finds a global with a valid dotted
    name (importable, so it would run before the stream breaks). Text such as
    Python source starts with opcode letters too, but its "globals" contain spaces
    and can never be imported.
    """
    if len(data) <= _QUICK_REJECT_BYTES:
        raw = bytes(data)
        if b"\n" not in raw and b"." not in raw and max(raw, default=0) < 0x80:
            # No newline: no GLOBAL/INST; no byte >= 0x80: no STACK_GLOBAL/EXT/PROTO;
            # no '.': never reaches STOP. Such bytes cannot import anything.
            return False
    try:
        result = ctx.pickle(data, member=None, adopt=False)
    except LimitExceeded:
        return True
    if result.complete:
        return True
    # the dotted name itself: str() of a GlobalRef is its repr, which never matches
    return any(_IDENT.match(ref.qualified) for ref in result.globals)
