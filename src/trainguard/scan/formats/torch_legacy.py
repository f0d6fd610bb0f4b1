"""PyTorch's legacy formats: stacked pickles (``_use_new_zipfile_serialization=False``) and tar.

Stacked layout, as ``torch.serialization._legacy_save`` writes it: a pickle of the
magic number, a pickle of the protocol version (1001), a pickle of ``sys_info``,
the object pickle, a pickle of the sorted storage keys, then for each key an
8-byte element count and the raw storage bytes. ``torch.load`` unpickles all
five pickles, so all five are scanned (ModelScan looked at the first only); the
raw storages are skipped exactly, using the element size of each storage's type
from the object pickle, so nothing after them can hide either.

Tar layout (PyTorch < 0.4): members ``sys_info``, ``pickle``, ``storages`` and
``tensors``. ``storages`` and ``tensors`` interleave small pickles with raw
records; they are walked the way ``torch.serialization.legacy_load`` reads them.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from trainguard.core.findings import Severity, Verdict
from trainguard.scan.formats.context import ScanContext
from trainguard.scan.formats.torch_zip import itemsize_of

_PROTOCOL_VERSION: Final = 1001
_MAGIC: Final = 0x1950A86A20F9469CFC6C


def _global_name(value: Any) -> str | None:
    qualified = getattr(value, "qualified", None)
    return qualified if isinstance(qualified, str) else None


def scan_torch_legacy(
    ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int
) -> None:
    """Scan all five pickles of a stacked legacy checkpoint, then skip its storages."""
    results = []
    pos = 0
    for _ in range(5):
        result = ctx.pickle(data, member=member, start=pos, base_offset=base_offset)
        results.append(result)
        if not result.complete:
            return
        pos = result.end
    if results[0].root != _MAGIC:
        ctx.report(
            "torch.legacy_magic",
            Severity.HIGH,
            Verdict.MALICIOUS,
            "the magic-number pickle does not hold the literal magic number",
            member=member,
            offset=base_offset,
        )
    if results[1].root != _PROTOCOL_VERSION:
        ctx.report(
            "torch.legacy_protocol",
            Severity.MEDIUM,
            Verdict.UNKNOWN,
            f"legacy protocol version {results[1].root!r}, expected {_PROTOCOL_VERSION}",
            member=member,
            offset=base_offset + results[1].start,
        )
    keys = results[4].root
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        ctx.report(
            "torch.legacy_keys",
            Severity.HIGH,
            Verdict.ERROR,
            "the storage-key pickle is not a list of strings; the storages cannot be located",
            member=member,
            offset=base_offset + results[4].start,
        )
        return
    from trainguard.scan.picklevm import storage_refs

    refs = {ref.key: ref for ref in storage_refs(results[3])}
    for key in keys:
        ctx.check_deadline()
        ref = refs.get(key)
        itemsize = itemsize_of(getattr(ref, "dtype", None)) if ref is not None else None
        if itemsize is None:
            ctx.report(
                "torch.legacy_storage",
                Severity.HIGH,
                Verdict.ERROR,
                f"storage {key!r} is listed but its type is not declared by the object pickle",
                member=member,
                offset=base_offset + pos,
            )
            return
        if pos + 8 > len(data):
            break
        (count,) = struct.unpack("<q", bytes(data[pos : pos + 8]))
        end = pos + 8 + count * itemsize
        declared = getattr(ref, "numel", None)
        if count < 0 or end > len(data):
            pos = len(data) + 1
            break
        if isinstance(declared, int) and declared > count:
            ctx.report(
                "torch.storage_too_small",
                Severity.HIGH,
                Verdict.MALICIOUS,
                f"storage {key!r} holds {count} elements, the object pickle declares {declared}",
                member=member,
                offset=base_offset + pos,
            )
        pos = end
    if pos > len(data):
        ctx.report(
            "torch.legacy_truncated",
            Severity.HIGH,
            Verdict.ERROR,
            "the raw storages run past the end of the file",
            member=member,
        )
        return
    if pos < len(data):
        _trailing(ctx, data, pos, member=member, base_offset=base_offset)
    ctx.verdict(Verdict.SAFE)


def _trailing(
    ctx: ScanContext, data: memoryview, pos: int, *, member: str | None, base_offset: int
) -> None:
    ctx.report(
        "torch.legacy_trailing_data",
        Severity.MEDIUM,
        Verdict.UNKNOWN,
        f"{len(data) - pos} bytes follow the last storage",
        member=member,
        offset=base_offset + pos,
    )
    tail = data[pos:]
    if bytes(tail[:1]) == b"\x80":
        ctx.pickle_stream(tail, member=member, base_offset=base_offset + pos, allow_trailing=True)


def scan_stacked_pickles(
    ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int
) -> None:
    """A plain pickle file: every pickle stacked in it is scanned, trailing bytes reported."""
    ctx.pickle_stream(data, member=member, base_offset=base_offset)


# -- legacy tar --------------------------------------------------------------------------
def check_legacy_tar(
    ctx: ScanContext, members: dict[str, memoryview], *, member: str | None
) -> None:
    """Walk ``storages`` and ``tensors`` the way ``legacy_load`` reads them."""
    _walk_records(ctx, members["storages"], _storage_record, "storages", member)
    _walk_records(ctx, members["tensors"], _tensor_record, "tensors", member)


def _storage_record(data: memoryview, pos: int, args: Any) -> int:
    """After ``(key, location, storage_type)``: an 8-byte count and the raw bytes."""
    if not isinstance(args, tuple) or len(args) != 3:
        raise ValueError("storage record is not (key, location, storage_type)")
    itemsize = itemsize_of(_global_name(args[2]) or args[2])
    if itemsize is None:
        raise ValueError(f"unknown storage type {args[2]!r}")
    (count,) = struct.unpack("<q", bytes(data[pos : pos + 8]))
    if count < 0:
        raise ValueError("negative storage size")
    return int(pos + 8 + count * itemsize)


def _tensor_record(data: memoryview, pos: int, args: Any) -> int:
    """After ``(key, storage_id, tensor_type)``: ndim, 4 pad bytes, sizes, strides, offset."""
    (ndim,) = struct.unpack("<i", bytes(data[pos : pos + 4]))
    if ndim < 0 or ndim > 64:
        raise ValueError(f"tensor record with {ndim} dimensions")
    return int(pos + 8 + 16 * ndim + 8)


def _walk_records(
    ctx: ScanContext, data: memoryview, record: Any, name: str, outer: str | None
) -> None:
    where = name if outer is None else f"{outer}!{name}"
    counter = ctx.pickle(data, member=where)
    if not counter.complete:
        return
    count = counter.root
    pos = counter.end
    if not isinstance(count, int) or count < 0:
        ctx.report(
            "torch.legacy_tar",
            Severity.HIGH,
            Verdict.ERROR,
            f"{name}: record count is not a non-negative int",
            member=where,
        )
        return
    try:
        for _ in range(count):
            ctx.check_deadline()
            result = ctx.pickle(data, member=where, start=pos)
            if not result.complete:
                return
            pos = record(data, result.end, result.root)
            if pos > len(data):
                raise ValueError("record runs past the end of the member")
    except (ValueError, struct.error) as exc:
        ctx.report(
            "torch.legacy_tar",
            Severity.HIGH,
            Verdict.ERROR,
            f"{name}: {exc}",
            member=where,
            offset=pos,
        )
        return
    if name == "storages" and pos < len(data):
        views = ctx.pickle(data, member=where, start=pos)
        pos = views.end if views.complete else len(data)
    if pos < len(data):
        ctx.report(
            "torch.legacy_trailing_data",
            Severity.MEDIUM,
            Verdict.UNKNOWN,
            f"{len(data) - pos} bytes follow the last {name} record",
            member=where,
        )
