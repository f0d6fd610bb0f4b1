"""``convert``: safe_load a checkpoint and write it as safetensors, checked by reloading.

safetensors stores flat ``name -> tensor`` maps with no code path at all. A torch
checkpoint is a tree (nested dicts, lists, scalars), may tie tensors (two names,
one storage) and may hold views into shared storage. We flatten the tree with
dotted names, write each tied tensor once and record the other names as aliases
in the metadata, give overlapping views their own copy, keep non-tensor leaves as
JSON strings in the metadata, and finally reload the output and compare it with
what was loaded, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, UnsafeFileError
from trainguard.load.safe_load import safe_load

ALIASES_KEY = "trainguard.aliases"
"""Metadata key: JSON object alias name -> stored tensor name."""
VALUES_KEY_PREFIX = "trainguard.value."
"""Metadata key prefix for non-tensor leaves (JSON-encoded)."""


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """What convert wrote."""

    output: Path
    """The safetensors file."""
    tensors: int
    """Tensors stored."""
    aliases: dict[str, str]
    """Tied names dropped from storage -> the stored name they alias."""
    copied_views: tuple[str, ...]
    """Views of shared storage that were written as their own copy."""
    values: int
    """Non-tensor leaves kept in the metadata."""


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            _flatten(value, name, out)
    elif isinstance(obj, list | tuple):
        for index, value in enumerate(obj):
            _flatten(value, f"{prefix}.{index}" if prefix else str(index), out)
    else:
        out[prefix or "value"] = obj


def _as_bytes(tensor: Any) -> Any:
    """The raw bytes of a tensor as a flat uint8 tensor (NaN-safe, -0.0-aware equality)."""
    import torch

    if tensor.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return tensor.reshape(-1).contiguous().view(torch.uint8)


def _json_value(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return json.dumps(str(value))


def _split(
    flat: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, str], list[str], dict[str, str]]:
    """Stored tensors, aliases, copied views, and metadata values."""
    import torch

    stored: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    copied: list[str] = []
    values: dict[str, str] = {}
    by_view: dict[tuple[Any, ...], str] = {}
    storages: dict[int, list[str]] = {}
    for name, value in flat.items():
        if not isinstance(value, torch.Tensor):
            values[VALUES_KEY_PREFIX + name] = _json_value(value)
            continue
        tensor = value.detach().cpu()
        storage = tensor.untyped_storage()
        view_key = (
            storage.data_ptr(),
            tensor.storage_offset(),
            tuple(tensor.shape),
            tuple(tensor.stride()),
            tensor.dtype,
        )
        if view_key in by_view and tensor.numel() > 0:
            aliases[name] = by_view[view_key]
            continue
        by_view[view_key] = name
        sharers = storages.setdefault(storage.data_ptr(), [])
        whole = (
            tensor.is_contiguous() and tensor.numel() * tensor.element_size() == storage.nbytes()
        )
        if (sharers or not whole) and tensor.numel() > 0:
            copied.append(name)
            tensor = tensor.contiguous().clone()
        sharers.append(name)
        stored[name] = tensor
    return stored, aliases, copied, values


def convert_to_safetensors(
    source: str | Path,
    output: str | Path,
    *,
    allow: Iterable[str] = (),
    overwrite: bool = False,
) -> ConversionResult:
    """Write ``source`` (scanned and loaded by safe_load) as safetensors at ``output``.

    Raises:
        UnsafeFileError: the source is refused, or the written file does not load
            back equal (the partial output is removed).
        InputError: ``output`` exists and ``overwrite`` is false, or holds no tensors.
    """
    import torch
    from safetensors.torch import load_file, save_file

    out_path = Path(output)
    if out_path.exists() and not overwrite:
        raise InputError(f"{out_path}: already exists; pass --force to overwrite")
    loaded = safe_load(source, map_location="cpu", allow=allow)
    flat: dict[str, Any] = {}
    _flatten(loaded, "", flat)
    stored, aliases, copied, values = _split(flat)
    if not stored:
        raise InputError(f"{source}: holds no tensors to convert")
    metadata = {"format": "pt", "trainguard.source": Path(source).name, **values}
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in stored.items()}, str(tmp_path), metadata=metadata)
    try:
        reloaded = load_file(str(tmp_path))
        for name, tensor in flat.items():
            if not isinstance(tensor, torch.Tensor):
                continue
            back = reloaded[aliases.get(name, name)]
            original = tensor.detach().cpu()
            if back.dtype != original.dtype or back.shape != original.shape:
                raise UnsafeFileError(f"{out_path}: tensor {name!r} changed dtype or shape")
            if not torch.equal(_as_bytes(back), _as_bytes(original)):
                raise UnsafeFileError(f"{out_path}: tensor {name!r} did not round-trip")
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(out_path)
    return ConversionResult(
        output=out_path,
        tensors=len(stored),
        aliases=aliases,
        copied_views=tuple(copied),
        values=len(values),
    )
