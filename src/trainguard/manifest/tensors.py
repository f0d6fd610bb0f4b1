"""Where the tensors are in a file: the byte layout that per-tensor digests are built on.

A *layout* cuts a file into labelled segments that tile it exactly (every byte in
exactly one segment): a safetensors header and one segment per tensor; a zip's
local headers, member data and central directory; an ``.npy`` header and its data.
The manifest builder hashes each segment (split into fixed blocks for parallelism)
and derives each tensor's digest from the digests of the segments it names, so every
byte of a model is hashed once and a changed byte can be traced to its tensor.

Nothing here executes, imports or unpickles anything from the file: safetensors and
``.npy`` headers are parsed as JSON / Python literals (``ast.literal_eval``), and the
pickle of a PyTorch zip is read by the scanner's symbolic pickle machine
(``trainguard.scan.picklevm``), which only interprets opcodes.

What a tensor digest covers (documented in docs/manifest.md):

- safetensors, ``.npy`` and stored ``.npz`` members: dtype, shape and the exact bytes
  of the tensor.
- PyTorch zip checkpoints: dtype, shape, stride, storage offset and the bytes of the
  whole storage the tensor views. Tensors that share one storage (tied weights,
  views) change together; the element count of ``verify --against`` is exact.
- Compressed ``.npz`` members: dtype, shape and the decompressed array bytes.
- Object arrays (pickled inside ``.npy``) are recorded with ``digest: null`` and a
  note: they are covered by the file digest but never interpreted.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

_logger = logging.getLogger(__name__)

SAFETENSORS_BITS: Final[Mapping[str, int]] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
"""Bits per element of every safetensors dtype."""

TORCH_ITEMSIZE: Final[Mapping[str, int]] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
}
"""Bytes per element of torch dtypes (names without the ``torch.`` prefix)."""

_STORAGE_DTYPE: Final[Mapping[str, str]] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
"""Legacy typed-storage class names and the dtype they hold."""

MAX_HEADER: Final = 100_000_000
"""Largest safetensors / npy header we parse (the reference implementation's limit)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A labelled byte range ``[start, end)`` of a file."""

    label: str
    """Unique within the file: ``header``, ``tensor:NAME``, ``member:NAME``, ``gap@OFFSET``."""
    start: int
    """First byte."""
    end: int
    """One past the last byte."""


@dataclass(frozen=True, slots=True)
class Decode:
    """How to reach a tensor's bytes when they are not a plain range of the file."""

    start: int
    """Offset of the compressed member data in the file."""
    length: int
    """Compressed length."""
    method: int
    """Zip compression method (8 = deflate)."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor as the file's structure describes it (no data read yet)."""

    dtype: str
    """Element type as the format names it (``F32``, ``float32``, ``<f4``)."""
    shape: tuple[int, ...]
    """Dimensions."""
    segments: tuple[str, ...] = ()
    """Labels of the segments whose bytes are this tensor's data (or its storage)."""
    geometry: Mapping[str, Any] = field(default_factory=dict)
    """Format-specific placement that the digest also covers (stride, storage offset)."""
    decode: Decode | None = None
    """Set for compressed members: the digest is over the decompressed array bytes."""
    skip_header: bool = False
    """With ``decode``: the decompressed bytes start with an ``.npy`` header to skip."""
    note: str | None = None
    """Why the tensor is not hashed as data (object arrays), or None."""


@dataclass(frozen=True, slots=True)
class Layout:
    """The structure of one file: its format, the segments tiling it and its tensors."""

    format: str
    """``safetensors``, ``torch-zip``, ``npz``, ``npy``, ``zip`` or ``raw``."""
    segments: tuple[Segment, ...]
    """Sorted, non-overlapping, covering ``[0, size)`` exactly."""
    tensors: Mapping[str, TensorSpec]
    """Tensor name -> spec, in file order."""
    error: str | None = None
    """Why a file that looks like a tensor format could not be parsed (fail closed:
    it is then hashed as raw bytes and the error is recorded in the manifest)."""


class LayoutError(ValueError):
    """The file claims a format but its structure is inconsistent."""


def tile(segments: list[Segment], size: int) -> tuple[Segment, ...]:
    """Sort ``segments``, refuse overlaps, and fill every uncovered range with a gap.

    Raises:
        LayoutError: Two segments overlap or one lies outside the file.
    """
    result: list[Segment] = []
    cursor = 0
    seen: set[str] = set()
    for seg in sorted((s for s in segments if s.end > s.start), key=lambda s: s.start):
        if seg.start < cursor or seg.end > size:
            raise LayoutError(f"segment {seg.label!r} [{seg.start}, {seg.end}) overlaps or escapes")
        if seg.label in seen:
            raise LayoutError(f"segment label {seg.label!r} repeats")
        seen.add(seg.label)
        if seg.start > cursor:
            result.append(Segment(f"gap@{cursor}", cursor, seg.start))
        result.append(seg)
        cursor = seg.end
    if cursor < size:
        result.append(Segment(f"gap@{cursor}", cursor, size))
    if not result:
        result.append(Segment("data", 0, 0))
    return tuple(result)


def raw_layout(size: int, error: str | None = None, fmt: str = "raw") -> Layout:
    """A file without tensor structure: one segment."""
    return Layout(fmt, (Segment("data", 0, size),), {}, error)


def sniff(head: bytes, size: int) -> str:
    """The container format by magic bytes (never by file name)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) >= 9 and size >= 10:
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return "raw"


def file_layout(data: memoryview) -> Layout:
    """The layout of a whole file given as a (memory-mapped) buffer; never raises on content."""
    size = len(data)
    fmt = sniff(bytes(data[:16]), size)
    try:
        if fmt == "safetensors":
            return safetensors_layout(data)
        if fmt == "npy":
            return npy_layout(data)
        if fmt == "zip":
            return zip_layout(data)
    except LayoutError as exc:
        _logger.debug("layout of %s file failed: %s", fmt, exc)
        return raw_layout(size, f"{fmt}: {exc}", fmt)
    return raw_layout(size)


# --------------------------------------------------------------------------- safetensors


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise LayoutError(f"header repeats the key {key!r}")
        result[key] = value
    return result


def safetensors_layout(data: memoryview) -> Layout:
    """Header segment, one segment per tensor; strict checks as the reference parser.

    Raises:
        LayoutError: The header is malformed, or offsets overlap or escape the buffer.
    """
    size = len(data)
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    if length > MAX_HEADER or length > size - 8:
        raise LayoutError(f"header length {length} exceeds the file or the limit")
    try:
        header = json.loads(
            bytes(data[8 : 8 + length]).decode("utf-8").rstrip(" "),
            object_pairs_hook=_no_duplicates,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, LayoutError):
            raise
        raise LayoutError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise LayoutError("header is not a JSON object")
    base = 8 + length
    segments = [Segment("header", 0, base)]
    tensors: dict[str, TensorSpec] = {}
    order: list[tuple[int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise LayoutError(f"tensor {name!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in SAFETENSORS_BITS:
            raise LayoutError(f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise LayoutError(f"tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_count(o) for o in offsets)
            or offsets[0] > offsets[1]
            or base + offsets[1] > size
        ):
            raise LayoutError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        numel = _numel(shape)
        if numel * SAFETENSORS_BITS[dtype] != (offsets[1] - offsets[0]) * 8:
            raise LayoutError(f"tensor {name!r}: shape {shape} of {dtype} disagrees with offsets")
        label = f"tensor:{name}"
        segments.append(Segment(label, base + offsets[0], base + offsets[1]))
        tensors[name] = TensorSpec(dtype, tuple(shape), (label,))
        order.append((offsets[0], name))
    order.sort()
    return Layout("safetensors", tile(segments, size), {n: tensors[n] for _, n in order})


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _numel(shape: Any) -> int:
    numel = 1
    for dim in shape:
        numel *= int(dim)
    return numel


# --------------------------------------------------------------------------- numpy


def parse_npy_header(head: bytes) -> tuple[str, tuple[int, ...], bool, int]:
    """``(descr, shape, fortran_order, data_offset)`` from the start of an ``.npy``.

    The header is a Python dict literal; ``ast.literal_eval`` evaluates literals only.

    Raises:
        LayoutError: Not a well-formed ``.npy`` header.
    """
    if len(head) < 10 or not head.startswith(b"\x93NUMPY"):
        raise LayoutError("not an .npy header")
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", head[8:10])
        start = 10
    elif major in (2, 3):
        if len(head) < 12:
            raise LayoutError("truncated .npy header")
        (hlen,) = struct.unpack("<I", head[8:12])
        start = 12
    else:
        raise LayoutError(f"unknown .npy version {major}")
    if hlen > MAX_HEADER or start + hlen > len(head):
        raise LayoutError(".npy header runs past the data")
    encoding = "utf-8" if major == 3 else "latin-1"
    try:
        meta = ast.literal_eval(head[start : start + hlen].decode(encoding))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError) as exc:
        raise LayoutError(f".npy header is not a literal: {exc}") from exc
    if not isinstance(meta, dict) or set(meta) != {"descr", "fortran_order", "shape"}:
        raise LayoutError(".npy header must have exactly descr, fortran_order and shape")
    shape = meta["shape"]
    if not isinstance(shape, tuple) or not all(_is_count(d) for d in shape):
        raise LayoutError(f".npy shape {shape!r} is invalid")
    if not isinstance(meta["fortran_order"], bool):
        raise LayoutError(".npy fortran_order is not a bool")
    descr = meta["descr"]
    descr_text = descr if isinstance(descr, str) else repr(descr)
    return descr_text, tuple(shape), meta["fortran_order"], start + hlen


_OBJECT_FIELD: Final = re.compile(r"""['"][<>|=]?O\d*['"]""")


def npy_is_object(descr: str) -> bool:
    """True for dtypes whose payload is a pickle (object arrays, structured with objects)."""
    return descr.lstrip("<>|=").startswith("O") or bool(_OBJECT_FIELD.search(descr))


def _npy_tensor(
    descr: str, shape: tuple[int, ...], fortran: bool, label: str, **kw: Any
) -> TensorSpec:
    geometry = {"fortran_order": True} if fortran else {}
    if npy_is_object(descr):
        return TensorSpec(
            descr,
            shape,
            (),
            geometry,
            note="object array: a pickle payload, covered by the file digest, never unpickled",
        )
    return TensorSpec(descr, shape, (label,), geometry, **kw)


def npy_layout(data: memoryview) -> Layout:
    """Header segment and one data segment holding the single array (named ``array``).

    Raises:
        LayoutError: The header is malformed.
    """
    size = len(data)
    descr, shape, fortran, offset = parse_npy_header(bytes(data[: min(size, 1 << 20)]))
    segments = [Segment("header", 0, offset), Segment("tensor:array", offset, size)]
    tensors = {"array": _npy_tensor(descr, shape, fortran, "tensor:array")}
    return Layout("npy", tile(segments, size), tensors)


# --------------------------------------------------------------------------- zip based


def zip_layout(data: memoryview) -> Layout:
    """Segments per zip member; tensors for PyTorch zip checkpoints and ``.npz`` archives.

    Raises:
        LayoutError: The archive cannot be parsed consistently.
    """
    from trainguard.scan.formats.zipreader import ZipArchive

    size = len(data)
    archive = ZipArchive(data)
    if not archive.valid:
        raise LayoutError("no readable central directory")
    segments: list[Segment] = []
    members: dict[str, tuple[int, int, int, int]] = {}
    used: set[str] = set()
    for entry in [*archive.entries, *archive.hidden]:
        if not entry.local_ok or entry.data_offset < 0:
            raise LayoutError(f"member {entry.name!r} has no readable local header")
        name = entry.name
        while name in used:  # duplicate names: keep both, visibly
            name += "#dup"
        used.add(name)
        data_end = entry.data_offset + entry.compress_size
        segments.append(Segment(f"zip:{name}", entry.header_offset, entry.data_offset))
        segments.append(Segment(f"member:{name}", entry.data_offset, data_end))
        if entry.data_end > data_end:
            segments.append(Segment(f"zip-tail:{name}", data_end, entry.data_end))
        members[name] = (entry.data_offset, entry.compress_size, entry.method, entry.file_size)
    names = list(members)
    pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if pickles and len(pickles) == 1:
        return _torch_zip_layout(data, segments, members, pickles[0])
    npys = [n for n in names if n.endswith(".npy")]
    if npys and len(npys) == len([n for n in names if not n.endswith("/")]):
        return _npz_layout(data, segments, members)
    return Layout("zip", tile(segments, size), {})


def _npz_layout(
    data: memoryview, segments: list[Segment], members: Mapping[str, tuple[int, int, int, int]]
) -> Layout:
    tensors: dict[str, TensorSpec] = {}
    out: list[Segment] = []
    for seg in segments:
        if not seg.label.startswith("member:"):
            out.append(seg)
            continue
        name = seg.label[len("member:") :]
        start, csize, method, _ = members[name]
        tensor = name[: -len(".npy")]
        if method == 0:
            head = bytes(data[start : start + min(csize, 1 << 20)])
            descr, shape, fortran, offset = parse_npy_header(head)
            out.append(Segment(f"npy:{name}", start, start + offset))
            out.append(Segment(seg.label, start + offset, start + csize))
            tensors[tensor] = _npy_tensor(descr, shape, fortran, seg.label)
        elif method == 8:
            head = _inflate_head(data[start : start + csize])
            descr, shape, fortran, _ = parse_npy_header(head)
            out.append(seg)
            tensors[tensor] = _npy_tensor(
                descr,
                shape,
                fortran,
                seg.label,
                decode=Decode(start, csize, method),
                skip_header=True,
            )
        else:
            raise LayoutError(f"member {name!r} uses compression method {method}")
    return Layout("npz", tile(out, len(data)), tensors)


def _inflate_head(raw: memoryview, want: int = 1 << 16) -> bytes:
    import zlib

    inflater = zlib.decompressobj(-15)
    try:
        return inflater.decompress(bytes(raw[: min(len(raw), want)]), want)
    except zlib.error as exc:
        raise LayoutError(f"compressed member does not inflate: {exc}") from exc


def _torch_zip_layout(
    data: memoryview,
    segments: list[Segment],
    members: Mapping[str, tuple[int, int, int, int]],
    pickle_name: str,
) -> Layout:
    """Tensors of a ``torch.save`` zip, mapped through the symbolic pickle machine."""
    size = len(data)
    prefix = pickle_name[: -len("data.pkl")]
    start, csize, method, _ = members[pickle_name]
    if method != 0:
        raise LayoutError(f"{pickle_name} is compressed (method {method})")
    try:
        refs = torch_refs(bytes(data[start : start + csize]))
    except LayoutError as exc:
        return Layout("torch-zip", tile(segments, size), {}, f"torch-zip: {exc}")
    tensors: dict[str, TensorSpec] = {}
    for name, ref in refs.items():
        member = f"{prefix}data/{ref.storage_key}"
        if member not in members:
            raise LayoutError(f"tensor {name!r} names storage {ref.storage_key!r} that is absent")
        if members[member][2] != 0:
            raise LayoutError(f"storage member {member!r} is compressed")
        dtype = normalise_torch_dtype(ref.dtype)
        tensors[name] = TensorSpec(
            dtype,
            tuple(int(d) for d in ref.shape),
            (f"member:{member}",),
            {
                "storage": str(ref.storage_key),
                "storage_offset": int(ref.storage_offset),
                "stride": [int(s) for s in ref.stride],
            },
        )
    return Layout("torch-zip", tile(segments, size), tensors)


def normalise_torch_dtype(dtype: Any) -> str:
    """``torch.float32`` / ``FloatStorage`` / ``float32`` -> ``float32``."""
    text = str(dtype)
    text = text.rsplit(".", 1)[-1]
    return _STORAGE_DTYPE.get(text, text)


@dataclass(frozen=True, slots=True)
class TorchRef:
    """What the manifest needs of one tensor reference in a torch pickle."""

    storage_key: str
    dtype: str
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def torch_refs(pickle_bytes: bytes) -> dict[str, TorchRef]:
    """Tensor name -> storage reference, by the scanner's symbolic pickle machine.

    The pickle is never unpickled: ``trainguard.scan.picklevm`` interprets opcodes
    symbolically and returns the tensor rebuild calls it saw.

    Raises:
        LayoutError: The machine is unavailable or cannot map the pickle to tensors.
    """
    try:
        machine = importlib.import_module("trainguard.scan.picklevm")
        analyze_pickle = machine.analyze_pickle
        torch_tensor_refs = machine.torch_tensor_refs
    except (ImportError, AttributeError) as exc:
        raise LayoutError(
            "the symbolic pickle machine (trainguard.scan.picklevm) is missing"
        ) from exc
    try:
        analysis = analyze_pickle(pickle_bytes)
        if not analysis.complete:
            raise LayoutError("the pickle does not end where the machine stopped")
        refs = torch_tensor_refs(analysis.root)
    except Exception as exc:  # any failure of the analysis fails closed
        raise LayoutError(f"pickle could not be mapped to tensors: {exc}") from exc
    result: dict[str, TorchRef] = {}
    for name, ref in dict(refs).items():
        result[str(name)] = TorchRef(
            str(ref.storage_key),
            str(ref.dtype),
            int(ref.storage_offset),
            tuple(int(d) for d in ref.shape),
            tuple(int(s) for s in ref.stride),
        )
    return result
