"""Count the elements that differ between two versions of one tensor (``verify --against``).

Both files are memory mapped and their layouts parsed again (nothing is unpickled:
PyTorch zips are mapped through the symbolic pickle machine). Contiguous tensors
are compared block by block and only differing blocks element by element; strided
PyTorch views are gathered per element in stride order.
"""

from __future__ import annotations

import zlib
from contextlib import ExitStack
from pathlib import Path
from typing import Final

from trainguard.manifest.build import _Mapped
from trainguard.manifest.tensors import (
    SAFETENSORS_BITS,
    TORCH_ITEMSIZE,
    Layout,
    TensorSpec,
    file_layout,
    parse_npy_header,
)

_BLOCK: Final = 1 << 16


def itemsize(layout: Layout, spec: TensorSpec) -> int | None:
    """Bytes per element, or None for sub-byte and unknown dtypes."""
    if layout.format == "safetensors":
        bits = SAFETENSORS_BITS.get(spec.dtype, 0)
        return bits // 8 if bits % 8 == 0 and bits else None
    if layout.format == "torch-zip":
        return TORCH_ITEMSIZE.get(spec.dtype)
    digits = "".join(ch for ch in spec.dtype if ch.isdigit())
    return int(digits) if digits and spec.dtype.lstrip("<>|=")[:1] in "fiubc" else None


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def tensor_bytes(mapped: _Mapped, layout: Layout, spec: TensorSpec, size: int) -> bytes | None:
    """The tensor's elements in logical order, or None when they cannot be read."""
    if spec.decode is not None:
        raw = bytes(mapped.view[spec.decode.start : spec.decode.start + spec.decode.length])
        try:
            data = zlib.decompressobj(-15).decompress(raw)
        except zlib.error:
            return None
        return data[parse_npy_header(data[: 1 << 20])[3] :] if spec.skip_header else data
    segments = {seg.label: seg for seg in layout.segments}
    if not spec.segments or spec.segments[0] not in segments:
        return None
    seg = segments[spec.segments[0]]
    if layout.format != "torch-zip":
        return bytes(mapped.view[seg.start : seg.end])
    numel = _numel(spec.shape)
    offset = int(spec.geometry.get("storage_offset", 0))
    stride = [int(s) for s in spec.geometry.get("stride", [])]
    if len(stride) != len(spec.shape):
        return None
    storage = mapped.view[seg.start : seg.end]
    contiguous, expected = True, 1
    for dim, st in zip(reversed(spec.shape), reversed(stride), strict=True):
        if dim != 1 and st != expected:
            contiguous = False
        expected *= dim
    if contiguous:
        start = offset * size
        if start + numel * size > len(storage):
            return None
        return bytes(storage[start : start + numel * size])
    out = bytearray()
    index = [0] * len(spec.shape)
    for _ in range(numel):
        pos = (offset + sum(i * s for i, s in zip(index, stride, strict=True))) * size
        if pos < 0 or pos + size > len(storage):
            return None
        out += storage[pos : pos + size]
        for axis in range(len(index) - 1, -1, -1):
            index[axis] += 1
            if index[axis] < spec.shape[axis]:
                break
            index[axis] = 0
    return bytes(out)


def count_differences(a: bytes, b: bytes, size: int) -> int:
    """Elements of ``size`` bytes that differ between equal-length buffers."""
    block = _BLOCK * size
    count = 0
    for start in range(0, len(a), block):
        left, right = a[start : start + block], b[start : start + block]
        if left == right:
            continue
        count += sum(
            1 for i in range(0, len(left), size) if left[i : i + size] != right[i : i + size]
        )
    return count


def differing_elements(old_file: Path, new_file: Path, name: str) -> tuple[int, int] | None:
    """``(differing, total)`` elements of tensor ``name`` in two files, or None if unknown."""
    with ExitStack() as stack:
        old_map, new_map = _Mapped(old_file, stack), _Mapped(new_file, stack)
        old_layout, new_layout = file_layout(old_map.view), file_layout(new_map.view)
        old_spec, new_spec = old_layout.tensors.get(name), new_layout.tensors.get(name)
        if old_spec is None or new_spec is None:
            return None
        if (old_spec.dtype, old_spec.shape) != (new_spec.dtype, new_spec.shape):
            return None
        size = itemsize(old_layout, old_spec)
        if size is None or old_spec.note or new_spec.note:
            return None
        old_bytes = tensor_bytes(old_map, old_layout, old_spec, size)
        new_bytes = tensor_bytes(new_map, new_layout, new_spec, size)
        if old_bytes is None or new_bytes is None or len(old_bytes) != len(new_bytes):
            return None
        return count_differences(old_bytes, new_bytes, size), len(old_bytes) // size
