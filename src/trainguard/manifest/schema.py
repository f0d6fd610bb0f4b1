"""The manifest: what a signature covers, as frozen values with a strict JSON form.

JSON shape (version 1; ``ALG`` is ``sha256`` or ``blake3``)::

    {"version": 1, "name": "ckpt-1000", "created": "2025-...Z", "tool": "trainguard 0.1.0",
     "hash": {"algorithm": ALG, "block_size": 67108864},
     "ignore": ["trainguard.sig.json"],
     "step": 1000, "run": "run-42", "parent": "<sha256 of the parent manifest>" | null,
     "ancestors": [{"step": 500, "digest": "..."}],
     "files": {"model.safetensors": {
         "size": 123, "format": "safetensors", ALG: "<file digest>",
         "spans": [[offset, length, "<digest>", "label"], ...],
         "tensors": {"w": {"dtype": "F32", "shape": [2, 3], "digest": "<digest>"}},
         "error": null}}}

``spans`` tile the file exactly; the file digest is computed from them (see
:mod:`trainguard.manifest.build`), so equal file digests mean equal bytes.
Parsing validates everything and raises :class:`ManifestError` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from trainguard.core.canonical import canonical_json
from trainguard.core.errors import ManifestError
from trainguard.core.hashing import HASH_ALGORITHMS, sha256_bytes

SCHEMA_VERSION: Final = 1
"""Bumped on any incompatible change of the JSON form."""

MANIFEST_DOMAIN: Final = "trainguard-manifest-v1"
"""Signing domain of manifests (see core.canonical.signing_input)."""

_HEX: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Span:
    """One hashed byte range of a file."""

    offset: int
    """First byte."""
    length: int
    """Number of bytes."""
    digest: str
    """Hex digest of exactly those bytes."""
    label: str
    """Segment the range belongs to (``header``, ``tensor:NAME``, ``member:NAME``...)."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor: its type, shape and a digest over those and its bytes."""

    dtype: str
    """Element type as the file format names it."""
    shape: tuple[int, ...]
    """Dimensions."""
    digest: str | None
    """Hex digest over dtype, shape, geometry and data; None when not hashed (see note)."""
    geometry: Mapping[str, Any] = field(default_factory=dict)
    """Placement inside a storage (PyTorch: storage, storage_offset, stride)."""
    note: str | None = None
    """Why ``digest`` is None (object arrays), or None."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the model."""

    size: int
    """Length in bytes."""
    format: str
    """Layout used: ``safetensors``, ``torch-zip``, ``npz``, ``npy``, ``zip``, ``raw``."""
    digest: str
    """File digest (algorithm of the manifest), derived from ``spans``."""
    spans: tuple[Span, ...]
    """Hashed ranges tiling the file."""
    tensors: Mapping[str, TensorEntry] = field(default_factory=dict)
    """Tensor name -> entry."""
    error: str | None = None
    """Why the file's tensor structure could not be read (it is hashed as bytes)."""


@dataclass(frozen=True, slots=True)
class Ancestor:
    """A manifest earlier in this checkpoint's lineage."""

    step: int | None
    """Its training step."""
    digest: str
    """Its :meth:`Manifest.digest`."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """Everything a signature over a model directory or file covers."""

    name: str
    """Name of the model (last path component); informative."""
    algorithm: str
    """``sha256`` or ``blake3``."""
    block_size: int
    """Largest span; segments longer than this are split into blocks."""
    files: Mapping[str, FileEntry]
    """POSIX relative path -> entry (``.`` for a single-file model)."""
    created: str
    """ISO-8601 UTC time of signing."""
    tool: str
    """``trainguard VERSION`` that built it."""
    ignore: tuple[str, ...] = ()
    """Relative paths excluded from the manifest (the signature file itself)."""
    step: int | None = None
    """Training step of the checkpoint."""
    run: str | None = None
    """Run identifier."""
    parent: str | None = None
    """Digest of the parent checkpoint's manifest."""
    ancestors: tuple[Ancestor, ...] = ()
    """Every ancestor (oldest first), so that descent is checkable from one manifest."""
    version: int = SCHEMA_VERSION
    """Schema version."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the exact value that is signed)."""
        return {
            "version": self.version,
            "name": self.name,
            "created": self.created,
            "tool": self.tool,
            "hash": {"algorithm": self.algorithm, "block_size": self.block_size},
            "ignore": list(self.ignore),
            "step": self.step,
            "run": self.run,
            "parent": self.parent,
            "ancestors": [{"step": a.step, "digest": a.digest} for a in self.ancestors],
            "files": {
                path: _file_to_dict(entry, self.algorithm) for path, entry in self.files.items()
            },
        }

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: how children name this manifest."""
        return sha256_bytes(canonical_json(self.to_dict()))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "manifest") -> Manifest:
        """Validate and build; every malformation raises :class:`ManifestError`."""
        obj = _obj(data, source)
        version = obj.get("version")
        if version != SCHEMA_VERSION:
            raise ManifestError(f"{source}: unsupported manifest version {version!r}")
        hash_info = _obj(obj.get("hash"), f"{source}: hash")
        algorithm = hash_info.get("algorithm")
        if algorithm not in HASH_ALGORITHMS:
            raise ManifestError(f"{source}: unknown hash algorithm {algorithm!r}")
        block_size = _int(hash_info.get("block_size"), f"{source}: hash.block_size", minimum=1)
        files_raw = _obj(obj.get("files"), f"{source}: files")
        files = {
            _str(path, f"{source}: file name"): _file_from_dict(
                entry, str(algorithm), f"{source}: files[{path!r}]"
            )
            for path, entry in files_raw.items()
        }
        ancestors = tuple(
            Ancestor(
                _opt_int(_obj(a, f"{source}: ancestors").get("step"), f"{source}: ancestor step"),
                _hex(_obj(a, f"{source}: ancestors").get("digest"), f"{source}: ancestor digest"),
            )
            for a in _list(obj.get("ancestors", []), f"{source}: ancestors")
        )
        parent = obj.get("parent")
        return cls(
            name=_str(obj.get("name"), f"{source}: name"),
            algorithm=str(algorithm),
            block_size=block_size,
            files=files,
            created=_str(obj.get("created"), f"{source}: created"),
            tool=_str(obj.get("tool"), f"{source}: tool"),
            ignore=tuple(
                _str(p, f"{source}: ignore") for p in _list(obj.get("ignore", []), "ignore")
            ),
            step=_opt_int(obj.get("step"), f"{source}: step"),
            run=None if obj.get("run") is None else _str(obj.get("run"), f"{source}: run"),
            parent=None if parent is None else _hex(parent, f"{source}: parent"),
            ancestors=ancestors,
            version=SCHEMA_VERSION,
        )


def _file_to_dict(entry: FileEntry, algorithm: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        "size": entry.size,
        "format": entry.format,
        algorithm: entry.digest,
        "spans": [[s.offset, s.length, s.digest, s.label] for s in entry.spans],
        "tensors": {name: _tensor_to_dict(t) for name, t in entry.tensors.items()},
    }
    if entry.error is not None:
        result["error"] = entry.error
    return result


def _tensor_to_dict(tensor: TensorEntry) -> dict[str, Any]:
    result: dict[str, Any] = {
        "dtype": tensor.dtype,
        "shape": list(tensor.shape),
        "digest": tensor.digest,
    }
    if tensor.geometry:
        result["geometry"] = dict(tensor.geometry)
    if tensor.note is not None:
        result["note"] = tensor.note
    return result


def _file_from_dict(data: Any, algorithm: str, where: str) -> FileEntry:
    obj = _obj(data, where)
    size = _int(obj.get("size"), f"{where}.size")
    spans = []
    cursor = 0
    for raw in _list(obj.get("spans"), f"{where}.spans"):
        item = _list(raw, f"{where}.spans[]")
        if len(item) != 4:
            raise ManifestError(f"{where}.spans: each span is [offset, length, digest, label]")
        span = Span(
            _int(item[0], f"{where}.spans offset"),
            _int(item[1], f"{where}.spans length"),
            _hex(item[2], f"{where}.spans digest"),
            _str(item[3], f"{where}.spans label"),
        )
        if span.offset != cursor:
            raise ManifestError(f"{where}.spans: spans must tile the file (gap at {cursor})")
        cursor += span.length
        spans.append(span)
    if cursor != size or not spans:
        raise ManifestError(f"{where}.spans: spans cover {cursor} bytes of {size}")
    tensors = {}
    for name, raw_tensor in _obj(obj.get("tensors", {}), f"{where}.tensors").items():
        t = _obj(raw_tensor, f"{where}.tensors[{name!r}]")
        digest = t.get("digest")
        tensors[_str(name, f"{where}.tensors name")] = TensorEntry(
            dtype=_str(t.get("dtype"), f"{where}.tensors[{name!r}].dtype"),
            shape=tuple(
                _int(d, f"{where}.tensors[{name!r}].shape")
                for d in _list(t.get("shape"), f"{where}.tensors[{name!r}].shape")
            ),
            digest=None if digest is None else _hex(digest, f"{where}.tensors[{name!r}].digest"),
            geometry=dict(_obj(t.get("geometry", {}), f"{where}.tensors[{name!r}].geometry")),
            note=None if t.get("note") is None else _str(t.get("note"), f"{where} note"),
        )
    error = obj.get("error")
    return FileEntry(
        size=size,
        format=_str(obj.get("format"), f"{where}.format"),
        digest=_hex(obj.get(algorithm), f"{where}.{algorithm}"),
        spans=tuple(spans),
        tensors=tensors,
        error=None if error is None else _str(error, f"{where}.error"),
    )


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ManifestError(f"{where}: expected a JSON array")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ManifestError(f"{where}: expected a string")
    return value


def _int(value: Any, where: str, *, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ManifestError(f"{where}: expected an integer >= {minimum}")
    return value


def _opt_int(value: Any, where: str) -> int | None:
    return None if value is None else _int(value, where)


def _hex(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX.match(value):
        raise ManifestError(f"{where}: expected a 64-digit lower-case hex digest")
    return value
