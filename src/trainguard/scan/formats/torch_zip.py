"""PyTorch's zip checkpoint format (``torch.save`` since 1.6).

Layout: every member sits under one top-level folder, the *archive name*, which
PyTorch takes from the first central-directory entry: ``<archive>/data.pkl`` (the
object pickle), ``<archive>/data/<key>`` (one raw storage per key),
``<archive>/version`` or ``<archive>/.data/version``, ``<archive>/byteorder``.

Only the directory, ``data.pkl`` and the small metadata members are read: the
storages are checked against what ``data.pkl`` declares (present, at least
``numel * itemsize`` bytes, every tensor view inside its storage) from the
directory sizes alone, so scanning a 100 GB checkpoint reads a few kilobytes.
A tensor whose size, stride and offset reach outside its storage is the shape
of the weights-only unpickler memory corruption (CVE-2026-24747) and is reported.

Checkpoints of one model share ``data.pkl`` byte for byte, so within one run its
analysis is done once and replayed for the others (:mod:`trainguard.scan.memo`);
everything that depends on the rest of the archive is checked for every file.
"""

from __future__ import annotations

from typing import Any, Final

from trainguard.core.findings import Severity, Verdict
from trainguard.core.record import Record
from trainguard.scan.formats.context import ScanContext
from trainguard.scan.formats.zipreader import ZipArchive, ZipEntry
from trainguard.scan.memo import PickleSummary, TensorGeometry

ITEMSIZE: Final = {
    "float64": 8,
    "double": 8,
    "float32": 4,
    "float": 4,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "complex128": 16,
    "cdouble": 16,
    "complex64": 8,
    "cfloat": 8,
    "complex32": 4,
    "chalf": 4,
    "int64": 8,
    "long": 8,
    "int32": 4,
    "int": 4,
    "int16": 2,
    "short": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "bits8": 1,
    "bits16": 2,
    "bits1x8": 1,
    "bits2x4": 1,
    "bits4x2": 1,
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "QInt8Storage": 1,
    "QUInt8Storage": 1,
    "QInt32Storage": 4,
    "QUInt4x2Storage": 1,
    "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
    "Float8_e4m3fnStorage": 1,
    "Float8_e5m2Storage": 1,
    "Float8_e4m3fnuzStorage": 1,
    "Float8_e5m2fnuzStorage": 1,
    "UInt16Storage": 2,
    "UInt32Storage": 4,
    "UInt64Storage": 8,
}
"""Bytes per element, by dtype name or legacy storage class name."""

_TORCHSCRIPT_MARKERS: Final = ("/code/", "/constants.pkl", "/bytecode.pkl")


def itemsize_of(dtype: object) -> int | None:
    """Bytes per element of a dtype or storage type (``torch.float32``, ``FloatStorage``)."""
    text = str(getattr(dtype, "name", None) or dtype)
    key = text.rsplit(".", 1)[-1]
    return ITEMSIZE.get(key)


class TorchZip(Record):
    """A zip recognised as a PyTorch checkpoint (or TorchScript archive).

    ``handled`` holds the ``id()`` of entries this module took care of; the generic
    member loop skips them.
    """

    __slots__ = ("archive", "handled", "pickle_entry", "root")

    def __init__(
        self,
        archive: ZipArchive,
        root: str,
        pickle_entry: ZipEntry,
        handled: set[int] | None = None,
    ) -> None:
        """Nothing handled yet."""
        self.archive = archive
        self.root = root
        self.pickle_entry = pickle_entry
        self.handled: set[int] = set() if handled is None else handled

    @classmethod
    def detect(cls, archive: ZipArchive) -> TorchZip | None:
        """PyTorch's rule: the archive name is the first entry's folder; it needs data.pkl."""
        if not archive.entries:
            return None
        first = archive.entries[0].name
        if "/" not in first:
            return None
        root = first.split("/", 1)[0]
        wanted = f"{root}/data.pkl"
        for entry in archive.entries:
            if entry.name == wanted:
                return cls(archive, root, entry)
        return None

    def _entry(self, name: str) -> ZipEntry | None:
        full = f"{self.root}/{name}"
        found = None
        for entry in self.archive.entries:
            if entry.name == full:
                found = entry if found is None else found
        return found

    def scan(self, ctx: ScanContext, *, member: str | None, base_offset: int) -> str:
        """Scan data.pkl and check every storage it references; return the format name."""
        from trainguard.scan.formats.archive import read_member

        fmt = "torch-zip"
        # One string "/name1\n/name2...": no marker holds a newline, so a marker occurs in
        # it exactly when it occurs in some "/name".
        names = "/" + "\n/".join(e.name for e in self.archive.entries)
        if any(marker in names for marker in _TORCHSCRIPT_MARKERS):
            fmt = "torchscript"
            ctx.report(
                "torch.torchscript",
                Severity.HIGH,
                Verdict.UNKNOWN,
                "TorchScript archive: torch.jit.load runs the code it contains (and torch.load "
                "without weights_only dispatches to it, CVE-2025-32434); load it only if you "
                "trust its author",
                member=member,
            )
        self.handled.add(id(self.pickle_entry))
        content = read_member(ctx, self.archive, self.pickle_entry, member=member)
        if content is None:
            return fmt
        pkl_name = _join(member, self.pickle_entry.name)
        offset = base_offset + self.pickle_entry.data_offset if self.pickle_entry.method == 0 else 0
        summary = _summary(ctx, content, pkl_name, offset)
        if summary.complete and summary.end < len(content):
            ctx.report(
                "torch.trailing_pickle_data",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"{len(content) - summary.end} bytes follow the STOP of data.pkl",
                member=pkl_name,
            )
        self._check_metadata(ctx, member)
        if summary.complete and fmt == "torch-zip":
            self._check_storages(ctx, summary, member)
        return fmt

    def _check_metadata(self, ctx: ScanContext, member: str | None) -> None:
        from trainguard.scan.formats.archive import read_member

        for name in ("byteorder",):
            entry = self._entry(name)
            if entry is None or entry.file_size > 64:
                continue
            value = read_member(ctx, self.archive, entry, member=member)
            self.handled.add(id(entry))
            if value is not None and bytes(value) not in (b"little", b"big"):
                ctx.report(
                    "torch.bad_byteorder",
                    Severity.MEDIUM,
                    Verdict.UNKNOWN,
                    f"byteorder member holds {bytes(value)[:16]!r}, not 'little' or 'big'",
                    member=_join(member, entry.name),
                )

    def _check_storages(self, ctx: ScanContext, summary: PickleSummary, member: str | None) -> None:
        """Every storage present and big enough; every tensor view inside its storage."""
        # the first entry of each name wins (later duplicates are reported by the reader)
        by_name = {candidate.name: candidate for candidate in reversed(self.archive.entries)}
        prefix = f"{self.root}/data/"
        storages: dict[str, int] = {}
        handled = self.handled
        for key, itemsize, numel, dtype in summary.storages:
            entry = by_name.get(prefix + key)
            if entry is None:
                ctx.report(
                    "torch.missing_storage",
                    Severity.HIGH,
                    Verdict.ERROR,
                    f"data.pkl references storage {key!r} but the archive has no such member",
                    member=_join(member, prefix + key),
                )
                continue
            handled.add(id(entry))
            if itemsize is None or not isinstance(numel, int):
                ctx.report(
                    "torch.storage_type",
                    Severity.MEDIUM,
                    Verdict.UNKNOWN,
                    f"storage {key!r} has an unrecognised type {dtype}",
                    member=_join(member, prefix + key),
                )
                continue
            if numel * itemsize > entry.file_size:
                ctx.report(
                    "torch.storage_too_small",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"storage {key!r} declares {numel} elements ({numel * itemsize} bytes) but "
                    f"the member holds {entry.file_size} bytes",
                    member=_join(member, prefix + key),
                )
            storages[key] = numel
        pkl_member = _join(member, self.pickle_entry.name)
        problems = summary.problems
        if problems is None:
            problems = tuple(geometry_problems(summary.tensors, storages))
        for rule, message in problems:
            ctx.report(rule, Severity.HIGH, Verdict.MALICIOUS, message, member=pkl_member)


def tensor_geometry(root: Any) -> tuple[TensorGeometry, ...]:
    """The geometry of every tensor reachable from a ``data.pkl`` root, in walk order."""
    from trainguard.scan.picklevm.torchrefs import torch_tensor_fields

    # fields: key, dtype, offset, shape, stride, location, numel, requires_grad, rebuild
    return tuple(
        [
            (name, str(f[0]), f[6], tuple(f[3] or ()), tuple(f[4] or ()), f[2] or 0)
            for name, f in torch_tensor_fields(root).items()
        ]
    )


def geometry_problems(
    tensors: tuple[TensorGeometry, ...], storages: dict[str, int]
) -> list[tuple[str, str]]:
    """``(rule, message)`` for every tensor view that is inconsistent or leaves its storage.

    ``storages`` maps the keys of storages present in the archive to their element
    count; it is consulted only for a tensor whose persistent id records none.
    """
    problems: list[tuple[str, str]] = []
    for name, key, storage_numel, shape, stride, offset in tensors:
        numel = storage_numel or storages.get(key)
        if not isinstance(numel, int) or not _ints(shape) or not _ints(stride):
            continue
        if not isinstance(offset, int) or len(shape) != len(stride):
            problems.append(
                ("torch.tensor_geometry", f"tensor {name!r} has inconsistent size/stride/offset")
            )
            continue
        # One loop instead of three generator passes (this runs for every tensor):
        # an empty dimension means no element is read; else the last element read is
        # offset + sum((size - 1) * stride).
        last = offset
        negative = offset < 0
        empty = False
        for d, s in zip(shape, stride, strict=True):
            if d == 0:
                empty = True
                break
            last += (d - 1) * s
            negative = negative or s < 0
        if empty:
            continue
        if negative or last >= numel:
            problems.append(
                (
                    "torch.tensor_out_of_bounds",
                    f"tensor {name!r} (offset {offset}, size {shape}, stride {stride}) reaches "
                    f"element {last} of a {numel}-element storage: an out-of-bounds view "
                    "(CVE-2026-24747 class)",
                )
            )
    return problems


def _summary(ctx: ScanContext, content: memoryview, pkl_name: str, offset: int) -> PickleSummary:
    """Analyse ``data.pkl`` (or replay the run's analysis of the same bytes) and adopt it."""
    from trainguard.scan.memo import digest

    memo = ctx.usable_memo()
    full_member = ctx.member(pkl_name)
    key = digest(content) if memo is not None else b""
    summary = memo.pickle(key, full_member, offset) if memo is not None else None
    if summary is None:
        summary = _analyse(ctx, content, full_member, offset)
        if memo is not None:
            memo.store_pickle(key, summary)
    else:
        ctx.check_deadline()
    ctx.adopt(summary.findings, summary.verdict)
    return summary


def _analyse(
    ctx: ScanContext, content: memoryview, full_member: str | None, offset: int
) -> PickleSummary:
    """Run the machine and keep only what the checks need, so a summary stays small."""
    from trainguard.scan.picklevm import analyze_pickle
    from trainguard.scan.picklevm.torchrefs import storage_fields

    ctx.check_deadline()
    result = analyze_pickle(
        content,
        member=full_member,
        policy=ctx.policy,
        limits=ctx.limits,
        base_offset=offset,
        deadline=ctx.deadline,
    )
    tensors = tensor_geometry(result.root) if result.complete else ()
    # Only a tensor whose persistent id records no element count looks at the storages
    # present in the archive; without one the problems are a function of data.pkl alone.
    standalone = all(t[2] for t in tensors)
    return PickleSummary(
        member=full_member,
        base_offset=offset,
        complete=result.complete,
        end=result.end,
        findings=result.findings,
        verdict=result.verdict,
        storages=tuple(
            [
                (str(key), itemsize_of(dtype), numel, repr(dtype))
                for key, dtype, _, numel in storage_fields(result)
            ]
        ),
        # Kept only when the problems must be worked out per file (memory: one record
        # per tensor would otherwise stay in the run's memo for nothing).
        tensors=() if standalone else tensors,
        problems=tuple(geometry_problems(tensors, {})) if standalone else None,
    )


def _ints(values: tuple[Any, ...]) -> bool:
    for v in values:
        if type(v) is not int and (not isinstance(v, int) or isinstance(v, bool)):
            return False
    return True


def _join(outer: str | None, inner: str) -> str:
    return inner if outer is None else f"{outer}!{inner}"
