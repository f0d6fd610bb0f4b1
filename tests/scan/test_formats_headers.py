"""Header-level formats that need no pickle machine: safetensors, .npy, sniffing, joblib blocks."""

from __future__ import annotations

import json
import struct

import pytest

from tests.factories import checkpoints as cf
from trainguard.core.findings import Verdict
from trainguard.core.limits import DEFAULT_LIMITS
from trainguard.scan.formats.context import ScanContext, combine
from trainguard.scan.formats.safetensors_header import scan_safetensors
from trainguard.scan.sniff import Kind, sniff


def _ctx() -> ScanContext:
    return ScanContext(path="t", limits=DEFAULT_LIMITS)


def _st(header: dict[str, object], body: bytes, *, raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _st_rules(data: bytes) -> tuple[set[str], Verdict]:
    ctx = _ctx()
    scan_safetensors(ctx, memoryview(data), member=None)
    return {f.rule for f in ctx.findings}, combine(ctx.verdicts)


def test_real_safetensors_is_safe() -> None:
    rules, verdict = _st_rules(cf.safetensors_bytes())
    assert rules == set() and verdict is Verdict.SAFE


GOOD = {
    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "__metadata__": {"format": "pt"},
}


@pytest.mark.parametrize(
    ("header", "body", "raw", "rule"),
    [
        (GOOD, b"\0" * 8, None, None),
        (GOOD, b"\0" * 12, None, "safetensors.trailing_data"),
        (GOOD, b"\0" * 4, None, "safetensors.truncated"),
        (
            {"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "safetensors.tensor",
        ),
        (
            {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            None,
            "safetensors.tensor",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            b"\0" * 12,
            None,
            "safetensors.offsets",
        ),
        ({"__metadata__": {"k": 1}}, b"", None, "safetensors.metadata"),
        (
            {},
            b"",
            b'{"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, '
            b'"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}',
            "safetensors.duplicate_key",
        ),
        ({}, b"", b"{not json", "safetensors.header_json"),
    ],
)
def test_safetensors_rules(
    header: dict[str, object], body: bytes, raw: bytes | None, rule: str | None
) -> None:
    rules, verdict = _st_rules(_st(header, body, raw=raw))
    if rule is None:
        assert rules == set() and verdict is Verdict.SAFE
    else:
        assert rule in rules and verdict is not Verdict.SAFE


def test_safetensors_header_length_outside_file() -> None:
    rules, verdict = _st_rules(struct.pack("<Q", 10**9) + b"{}")
    assert "safetensors.header_length" in rules and verdict is Verdict.ERROR


def test_npy_header_and_dtype_sizes() -> None:
    np = pytest.importorskip("numpy")
    from trainguard.scan.formats.npy import dtype_info, parse_header

    for array in (
        np.arange(6, dtype=np.int16).reshape(2, 3),
        np.zeros(3, dtype="<U4"),
        np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8", (2,))]),
        np.ones(0),
    ):
        data = cf.npy_bytes(array)
        header, start = parse_header(memoryview(data))
        itemsize, has_obj = dtype_info(header["descr"])
        assert itemsize == array.dtype.itemsize
        assert not has_obj
        assert len(data) - start == array.nbytes
    header, _ = parse_header(memoryview(cf.npy_bytes(np.array([1, "a"], dtype=object))))
    assert dtype_info(header["descr"])[1]


def test_npy_plain_geometry_rules() -> None:
    np = pytest.importorskip("numpy")
    from trainguard.scan.formats.npy import scan_npy

    good = cf.npy_bytes(np.arange(10, dtype=np.float32))
    for data, rule in (
        (good, None),
        (good[:-4], "npy.truncated"),
        (good + b"\0" * 4, "npy.trailing_data"),
        (good[:8] + b"\xff\xff" + good[10:], "npy.bad_header"),
    ):
        ctx = _ctx()
        scan_npy(ctx, memoryview(data), member=None)
        rules = {f.rule for f in ctx.findings}
        if rule is None:
            assert rules == set() and combine(ctx.verdicts) is Verdict.SAFE
        else:
            assert rule in rules


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"PK\x03\x04rest", Kind.ZIP),
        (b"\x93NUMPY\x01\x00", Kind.NPY),
        (b"\x1f\x8b\x08\x00", Kind.GZIP),
        (b"BZh91AY", Kind.BZIP2),
        (b"\xfd7zXZ\x00\x00", Kind.XZ),
        (b"7z\xbc\xaf\x27\x1c\x00", Kind.SEVENZIP),
        (b"\x80\x02}q\x00.", Kind.PICKLE),
        (b"cos\nsystem\n", Kind.MAYBE_PICKLE),
        (b"\x00\x01\x02", Kind.DATA),
        (b"", Kind.EMPTY),
    ],
)
def test_sniff_by_content(data: bytes, kind: Kind) -> None:
    assert sniff(data, len(data)) is kind


def test_sniff_safetensors_regardless_of_name() -> None:
    data = cf.safetensors_bytes()
    assert sniff(data[:512], len(data)) is Kind.SAFETENSORS


def test_joblib_walker_skips_blocks_exactly() -> None:
    np = pytest.importorskip("numpy")
    from trainguard.scan.formats.joblib import _Walker

    arrays = [
        np.arange(7, dtype=np.float64),
        np.ones((3, 5), dtype=np.int8, order="F"),
        np.zeros(4, dtype="<U3"),
        np.arange(3, dtype=">i4"),
    ]
    data = cf.joblib_bytes({"arrays": arrays, "tail": "after"})
    walker = _Walker(memoryview(data), _ctx(), None)
    end = walker.run()
    assert end == len(data)
    raw = [b for b in walker.blocks if b.kind == "raw"]
    assert len(raw) == len(arrays)
    for block, array in zip(raw, arrays, strict=True):
        padding = data[block.start]
        assert block.end - block.start == 1 + padding + array.nbytes
