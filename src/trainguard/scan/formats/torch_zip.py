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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from trainguard.core.findings import Severity, Verdict
from trainguard.scan.formats.context import ScanContext
from trainguard.scan.formats.zipreader import ZipArchive, ZipEntry

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


@dataclass(slots=True)
class TorchZip:
    """A zip recognised as a PyTorch checkpoint (or TorchScript archive)."""

    archive: ZipArchive
    root: str
    pickle_entry: ZipEntry
    handled: set[int] = field(default_factory=set)
    """``id()`` of entries this module took care of; the generic member loop skips them."""

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
        names = [e.name for e in self.archive.entries]
        if any(marker in f"/{n}" for n in names for marker in _TORCHSCRIPT_MARKERS):
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
        result = ctx.pickle(content, member=pkl_name, base_offset=offset)
        if result.complete and result.end < len(content):
            ctx.report(
                "torch.trailing_pickle_data",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"{len(content) - result.end} bytes follow the STOP of data.pkl",
                member=pkl_name,
            )
        self._check_metadata(ctx, member)
        if result.complete and fmt == "torch-zip":
            self._check_storages(ctx, result, member)
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

    def _check_storages(self, ctx: ScanContext, result: Any, member: str | None) -> None:
        from trainguard.scan.picklevm import storage_refs, torch_tensor_refs

        storages: dict[str, int] = {}
        for ref in storage_refs(result):
            key = ref.key
            itemsize = itemsize_of(getattr(ref, "dtype", None))
            numel = getattr(ref, "numel", None)
            entry = self._entry(f"data/{key}")
            where = _join(member, f"{self.root}/data/{key}")
            if entry is None:
                ctx.report(
                    "torch.missing_storage",
                    Severity.HIGH,
                    Verdict.ERROR,
                    f"data.pkl references storage {key!r} but the archive has no such member",
                    member=where,
                )
                continue
            self.handled.add(id(entry))
            if itemsize is None or not isinstance(numel, int):
                ctx.report(
                    "torch.storage_type",
                    Severity.MEDIUM,
                    Verdict.UNKNOWN,
                    f"storage {key!r} has an unrecognised type {getattr(ref, 'dtype', None)!r}",
                    member=where,
                )
                continue
            if numel * itemsize > entry.file_size:
                ctx.report(
                    "torch.storage_too_small",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"storage {key!r} declares {numel} elements ({numel * itemsize} bytes) but "
                    f"the member holds {entry.file_size} bytes",
                    member=where,
                )
            storages[str(key)] = numel
        for name, tensor in torch_tensor_refs(result.root).items():
            key = str(getattr(tensor, "storage_key", ""))
            numel = getattr(tensor, "storage_numel", None) or storages.get(key)
            shape = tuple(getattr(tensor, "shape", ()) or ())
            stride = tuple(getattr(tensor, "stride", ()) or ())
            offset = getattr(tensor, "storage_offset", 0) or 0
            if not isinstance(numel, int) or not _ints(shape) or not _ints(stride):
                continue
            if not isinstance(offset, int) or len(shape) != len(stride):
                ctx.report(
                    "torch.tensor_geometry",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"tensor {name!r} has inconsistent size/stride/offset",
                    member=_join(member, self.pickle_entry.name),
                )
                continue
            if any(d == 0 for d in shape):
                continue
            last = offset + sum((d - 1) * s for d, s in zip(shape, stride, strict=True))
            if offset < 0 or any(s < 0 for s in stride) or last >= numel:
                ctx.report(
                    "torch.tensor_out_of_bounds",
                    Severity.HIGH,
                    Verdict.MALICIOUS,
                    f"tensor {name!r} (offset {offset}, size {shape}, stride {stride}) reaches "
                    f"element {last} of a {numel}-element storage: an out-of-bounds view "
                    "(CVE-2026-24747 class)",
                    member=_join(member, self.pickle_entry.name),
                )


def _ints(values: tuple[Any, ...]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def _join(outer: str | None, inner: str) -> str:
    return inner if outer is None else f"{outer}!{inner}"
