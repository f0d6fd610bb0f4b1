"""Validation of a safetensors header, as strictly as the reference implementation.

The safetensors format holds no code, so a file that validates is ``safe``. What
can go wrong is structural: a header length outside the file, JSON with duplicate
keys (two parsers, two readings), an unknown dtype, a shape whose byte size does
not match its offsets, offsets that overlap, leave holes or do not cover the
buffer exactly (trailing bytes are how polyglots hide), and metadata that is not
``str -> str``. Each is a finding; only the header is read, never tensor data.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

from trainguard.core.findings import Severity, Verdict
from trainguard.scan.formats.context import ScanContext, limit

DTYPE_BITS: Final = {
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
"""Bits per element of every dtype the safetensors specification defines."""

MAX_HEADER: Final = 100_000_000
"""The reference implementation refuses headers above 100 MB."""


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(key)
        result[key] = value
    return result


def _bad(ctx: ScanContext, rule: str, message: str, *, member: str | None, offset: int) -> None:
    ctx.report(rule, Severity.HIGH, Verdict.ERROR, message, member=member, offset=offset)


def scan_safetensors(ctx: ScanContext, data: memoryview, *, member: str | None) -> None:
    """Validate one safetensors buffer; report every violation of the specification."""
    size = len(data)
    if size < 8:
        _bad(
            ctx,
            "safetensors.truncated",
            "shorter than the 8-byte header length",
            member=member,
            offset=0,
        )
        return
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    cap = min(limit(ctx.limits, "max_header_bytes", MAX_HEADER), MAX_HEADER)
    if length > cap or length > size - 8:
        _bad(
            ctx,
            "safetensors.header_length",
            f"header length {length} exceeds the file ({size} bytes) or the {cap}-byte limit",
            member=member,
            offset=0,
        )
        return
    raw = bytes(data[8 : 8 + length])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        _bad(ctx, "safetensors.header_encoding", "header is not UTF-8", member=member, offset=8)
        return
    if not text.startswith("{"):
        _bad(
            ctx,
            "safetensors.header_json",
            "header does not start with '{'",
            member=member,
            offset=8,
        )
        return
    try:
        header = json.loads(text.rstrip(" "), object_pairs_hook=_no_duplicates)
    except _Duplicate as exc:
        ctx.report(
            "safetensors.duplicate_key",
            Severity.HIGH,
            Verdict.MALICIOUS,
            f"header repeats the key {exc.args[0]!r}; parsers disagree on which one counts",
            member=member,
            offset=8,
        )
        return
    except (ValueError, RecursionError) as exc:
        _bad(
            ctx,
            "safetensors.header_json",
            f"header is not valid JSON: {exc}",
            member=member,
            offset=8,
        )
        return
    if not isinstance(header, dict):
        _bad(ctx, "safetensors.header_json", "header is not a JSON object", member=member, offset=8)
        return
    buffer_len = size - 8 - length
    spans: list[tuple[int, int, str]] = []
    ok = True
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                _bad(
                    ctx,
                    "safetensors.metadata",
                    "__metadata__ must map strings to strings",
                    member=member,
                    offset=8,
                )
                ok = False
            continue
        problem = _check_tensor(name, info)
        if problem is not None:
            _bad(ctx, "safetensors.tensor", problem, member=member, offset=8)
            ok = False
            continue
        begin, end = info["data_offsets"]
        spans.append((begin, end, name))
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            _bad(
                ctx,
                "safetensors.offsets",
                f"tensor {name!r} starts at {begin}, expected {cursor}: offsets must be "
                "contiguous and non-overlapping",
                member=member,
                offset=8 + length + begin,
            )
            ok = False
            break
        cursor = end
    if ok and cursor != buffer_len:
        rule = "safetensors.trailing_data" if cursor < buffer_len else "safetensors.truncated"
        _bad(
            ctx,
            rule,
            f"tensors cover {cursor} bytes but the data buffer is {buffer_len} bytes",
            member=member,
            offset=8 + length + cursor,
        )
        ok = False
    if ok:
        ctx.verdict(Verdict.SAFE)


def _check_tensor(name: str, info: Any) -> str | None:
    """Why one tensor entry is invalid, or None."""
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        return f"tensor {name!r} must have exactly dtype, shape and data_offsets"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BITS:
        return f"tensor {name!r} has unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return f"tensor {name!r} has an invalid shape {shape!r}"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        return f"tensor {name!r} has invalid data_offsets {offsets!r}"
    numel = 1
    for dim in shape:
        numel *= dim
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8:
        return f"tensor {name!r}: {numel} elements of {dtype} are not a whole number of bytes"
    if bits // 8 != offsets[1] - offsets[0]:
        return (
            f"tensor {name!r}: shape {shape} of {dtype} needs {bits // 8} bytes, offsets give "
            f"{offsets[1] - offsets[0]}"
        )
    return None
