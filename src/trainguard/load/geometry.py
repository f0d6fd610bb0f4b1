"""Tensor geometry against storage sizes, checked before torch sees the file.

A crafted checkpoint can declare a tensor whose shape, stride and offset reach past
the end of its storage; some torch versions then read out of bounds. We recompute
the highest element index each tensor view touches from the symbolic pickle
analysis and compare it with the storage's element count and the bytes the
archive really holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainguard.core.errors import UnsafeFileError

_ITEMSIZE = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "complex128": 16, "complex64": 8,
    "complex32": 4, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "uint16": 2,
    "uint32": 4, "uint64": 8, "bool": 1, "qint8": 1, "quint8": 1, "qint32": 4,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1,
}  # fmt: skip


def itemsize(dtype: str) -> int | None:
    """Bytes per element of a torch dtype name, or None when unknown."""
    return _ITEMSIZE.get(dtype)


def view_extent(storage_offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Number of storage elements a strided view needs (0 for an empty tensor)."""
    if len(shape) != len(stride):
        raise ValueError("shape and stride differ in length")
    if any(dim < 0 for dim in shape) or any(s < 0 for s in stride) or storage_offset < 0:
        raise ValueError("negative size, stride or offset")
    if any(dim == 0 for dim in shape):
        return 0
    return storage_offset + sum((dim - 1) * s for dim, s in zip(shape, stride, strict=True)) + 1


def check_geometry(
    tensors: Mapping[str, Any],
    storage_bytes: Mapping[str, int],
    *,
    path: str,
) -> None:
    """Raise when a tensor view reaches outside its storage.

    Args:
        tensors: name -> TensorRef (storage_key, dtype, storage_offset, shape, stride,
            storage_numel) from :func:`trainguard.scan.picklevm.torch_tensor_refs`.
        storage_bytes: storage key -> bytes present in the archive for that storage.
        path: file name for messages.
    """
    for name, ref in tensors.items():
        size = itemsize(str(ref.dtype))
        if size is None:
            raise UnsafeFileError(f"{path}: tensor {name!r} has unsupported dtype {ref.dtype!r}")
        try:
            needed = view_extent(int(ref.storage_offset), tuple(ref.shape), tuple(ref.stride))
        except (TypeError, ValueError) as exc:
            raise UnsafeFileError(f"{path}: tensor {name!r} has invalid geometry: {exc}") from exc
        available = storage_bytes.get(str(ref.storage_key))
        if available is None:
            raise UnsafeFileError(
                f"{path}: tensor {name!r} refers to storage {ref.storage_key!r}, "
                "which the archive does not contain"
            )
        declared = getattr(ref, "storage_numel", None)
        limit = available // size
        if declared is not None:
            limit = min(limit, int(declared))
        if needed > limit:
            raise UnsafeFileError(
                f"{path}: tensor {name!r} needs {needed} elements of storage "
                f"{ref.storage_key!r}, which holds only {limit}"
            )
