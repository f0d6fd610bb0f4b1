"""NumPy ``.npy``: header parsing, geometry checks, and the pickle inside object arrays.

An ``.npy`` of a plain dtype is raw bytes after a literal header and is safe once
its size adds up (``prod(shape) * itemsize``). An array whose dtype holds Python
objects is written with ``pickle.dump`` after the header, and ``np.load(...,
allow_pickle=True)`` unpickles it: that payload goes to the pickle machine. The
dtype is worked out here from its description, without importing numpy.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final

from trainguard.core.findings import Severity, Verdict
from trainguard.scan.formats.context import ScanContext

MAGIC: Final = b"\x93NUMPY"
MAX_HEADER: Final = 10_000
"""``numpy.lib.format`` refuses longer headers by default (``max_header_size``)."""

_CHAR_SIZES: Final = {
    "?": 1,
    "b": 1,
    "B": 1,
    "h": 2,
    "H": 2,
    "i": 4,
    "I": 4,
    "l": 8,
    "L": 8,
    "q": 8,
    "Q": 8,
    "p": 8,
    "P": 8,
    "e": 2,
    "f": 4,
    "d": 8,
    "g": 16,
    "F": 8,
    "D": 16,
    "G": 32,
}
_KIND_RE: Final = re.compile(r"^[<>|=]?([biufcSaUVOMm])(\d+)(\[\w+\])?$")


class DtypeError(ValueError):
    """The dtype description cannot be understood without numpy."""


def dtype_info(descr: Any, depth: int = 0) -> tuple[int, bool]:
    """``(itemsize, holds_objects)`` of an ``.npy`` dtype description."""
    if depth > 32:
        raise DtypeError("dtype description nested too deeply")
    if isinstance(descr, str):
        return _typestr_info(descr)
    if isinstance(descr, tuple) and len(descr) == 2:
        base_size, has_obj = dtype_info(descr[0], depth + 1)
        return base_size * _count(descr[1]), has_obj
    if isinstance(descr, list):
        total, has_obj = 0, False
        for field in descr:
            if not isinstance(field, tuple) or len(field) not in (2, 3):
                raise DtypeError(f"invalid structured field {field!r}")
            size, obj = dtype_info(field[1], depth + 1)
            if len(field) == 3:
                size *= _count(field[2])
            total += size
            has_obj = has_obj or obj
        return total, has_obj
    raise DtypeError(f"unsupported dtype description {descr!r}")


def _count(shape: Any) -> int:
    if isinstance(shape, int) and not isinstance(shape, bool) and shape >= 0:
        return shape
    if isinstance(shape, tuple) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        n = 1
        for d in shape:
            n *= d
        return n
    raise DtypeError(f"invalid sub-array shape {shape!r}")


def _typestr_info(text: str) -> tuple[int, bool]:
    stripped = text.lstrip("<>|=")
    if stripped == "O":
        return 8, True
    if len(stripped) == 1 and stripped in _CHAR_SIZES:
        return _CHAR_SIZES[stripped], False
    match = _KIND_RE.match(text)
    if match is None:
        raise DtypeError(f"unsupported dtype {text!r}")
    kind, digits = match.group(1), int(match.group(2))
    if kind == "O":
        return digits, True
    if kind == "U":
        return 4 * digits, False
    return digits, False


def parse_header(data: memoryview) -> tuple[dict[str, Any], int]:
    """The header dict and the offset where array data starts; raises ``ValueError``."""
    if len(data) < 10 or bytes(data[:6]) != MAGIC:
        raise ValueError("missing the \\x93NUMPY magic")
    major = data[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", bytes(data[8:10]))
        start = 10
    elif major in (2, 3):
        if len(data) < 12:
            raise ValueError("truncated header length")
        (hlen,) = struct.unpack("<I", bytes(data[8:12]))
        start = 12
    else:
        raise ValueError(f"unsupported .npy format version {major}")
    if hlen > MAX_HEADER:
        raise ValueError(f"header of {hlen} bytes exceeds numpy's {MAX_HEADER}-byte limit")
    if start + hlen > len(data):
        raise ValueError("header runs past the end of the file")
    encoding = "utf-8" if major == 3 else "latin1"
    text = bytes(data[start : start + hlen]).decode(encoding, "replace")
    try:
        import ast  # only .npy headers need it; keeps the scanner's start-up short

        header = ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError) as exc:
        raise ValueError(f"header is not a Python literal: {exc}") from exc
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise ValueError("header must hold exactly descr, fortran_order and shape")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError(f"invalid shape {shape!r}")
    if not isinstance(header["fortran_order"], bool):
        raise ValueError("fortran_order must be a bool")
    return header, start + hlen


def scan_npy(
    ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int = 0
) -> None:
    """Validate one ``.npy`` buffer; scan its pickle payload when the dtype holds objects."""
    try:
        header, data_start = parse_header(data)
        itemsize, has_objects = dtype_info(header["descr"])
    except ValueError as exc:
        ctx.report(
            "npy.bad_header",
            Severity.HIGH,
            Verdict.ERROR,
            f".npy header cannot be parsed: {exc}",
            member=member,
            offset=base_offset,
        )
        return
    if has_objects:
        ctx.report(
            "npy.object_dtype",
            Severity.LOW,
            Verdict.SAFE,
            "array of Python objects: np.load(allow_pickle=True) unpickles its payload, "
            "which was scanned",
            member=member,
            offset=base_offset + data_start,
        )
        result = ctx.pickle(data, member=member, start=data_start, base_offset=base_offset)
        if result.complete and result.end < len(data):
            ctx.report(
                "npy.trailing_data",
                Severity.MEDIUM,
                Verdict.UNKNOWN,
                f"{len(data) - result.end} bytes follow the object array's pickle",
                member=member,
                offset=base_offset + result.end,
            )
        return
    count = 1
    for dim in header["shape"]:
        count *= dim
    expected = count * itemsize
    actual = len(data) - data_start
    if actual < expected:
        ctx.report(
            "npy.truncated",
            Severity.HIGH,
            Verdict.ERROR,
            f"shape {header['shape']} needs {expected} bytes of data, the file holds {actual}",
            member=member,
            offset=base_offset + data_start,
        )
    elif actual > expected:
        ctx.report(
            "npy.trailing_data",
            Severity.MEDIUM,
            Verdict.UNKNOWN,
            f"{actual - expected} bytes follow the array data (np.save never writes them)",
            member=member,
            offset=base_offset + data_start + expected,
        )
    else:
        ctx.verdict(Verdict.SAFE)
