"""What differs between a signed manifest and the one built from the files on disk.

The diff names files (added, removed, changed) and, inside changed tensor files, the
tensors that changed and how (dtype, shape, data, placement), plus the non-tensor
regions that changed (a safetensors header with its metadata, a zip member such as
``data.pkl``, zip records). ``verify --against OLD`` adds, per changed tensor, how
many elements differ, by reading both versions (:mod:`trainguard.manifest.elements`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.manifest.schema import FileEntry, Manifest, TensorEntry


@dataclass(frozen=True, slots=True)
class TensorChange:
    """One tensor that is not as signed."""

    name: str
    """Tensor name."""
    kind: str
    """``changed``, ``added`` or ``removed``."""
    fields: tuple[str, ...] = ()
    """For ``changed``: which of ``dtype``, ``shape``, ``geometry``, ``data`` differ."""
    old: TensorEntry | None = None
    """As signed."""
    new: TensorEntry | None = None
    """As found."""
    differing_elements: int | None = None
    """Elements that differ (only with both versions at hand and equal dtype and shape)."""
    total_elements: int | None = None
    """Elements in the tensor, alongside ``differing_elements``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for reports."""
        result: dict[str, Any] = {"name": self.name, "change": self.kind}
        if self.fields:
            result["fields"] = list(self.fields)
        if self.old is not None:
            result["signed"] = {"dtype": self.old.dtype, "shape": list(self.old.shape)}
        if self.new is not None:
            result["found"] = {"dtype": self.new.dtype, "shape": list(self.new.shape)}
        if self.differing_elements is not None:
            result["differing_elements"] = self.differing_elements
            result["total_elements"] = self.total_elements
        return result

    def describe(self) -> str:
        """One short phrase: ``w (data: 3 of 6 elements differ)``."""
        if self.kind != "changed":
            return f"{self.name} ({self.kind})"
        parts = []
        for name in self.fields:
            if name == "dtype" and self.old and self.new:
                parts.append(f"dtype {self.old.dtype} -> {self.new.dtype}")
            elif name == "shape" and self.old and self.new:
                parts.append(f"shape {list(self.old.shape)} -> {list(self.new.shape)}")
            else:
                parts.append(name)
        if self.differing_elements is not None:
            parts.append(f"{self.differing_elements} of {self.total_elements} elements differ")
        return f"{self.name} ({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class FileChange:
    """One file that is not as signed."""

    path: str
    """Relative path in the model (``.`` for a single-file model)."""
    kind: str
    """``added``, ``removed`` or ``changed``."""
    old: FileEntry | None = None
    """As signed."""
    new: FileEntry | None = None
    """As found."""
    tensors: tuple[TensorChange, ...] = ()
    """Tensors that changed, were added or removed."""
    regions: tuple[str, ...] = ()
    """Non-tensor segments that changed (``header``, ``member:archive/data.pkl``...)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form for reports."""
        result: dict[str, Any] = {"path": self.path, "change": self.kind}
        if self.old is not None:
            result["signed_size"] = self.old.size
        if self.new is not None:
            result["size"] = self.new.size
            if self.new.error:
                result["error"] = self.new.error
        if self.tensors:
            result["tensors"] = [t.to_dict() for t in self.tensors]
        if self.regions:
            result["regions"] = list(self.regions)
        return result

    def describe(self) -> str:
        """One line for humans."""
        if self.kind != "changed":
            return f"{self.path}: file {self.kind}"
        parts = []
        if self.old is not None and self.new is not None and self.old.size != self.new.size:
            parts.append(f"size {self.old.size} -> {self.new.size}")
        if self.tensors:
            shown = ", ".join(t.describe() for t in self.tensors[:10])
            more = f" and {len(self.tensors) - 10} more" if len(self.tensors) > 10 else ""
            noun = "tensor" if len(self.tensors) == 1 else "tensors"
            parts.append(f"{len(self.tensors)} {noun}: {shown}{more}")
        if self.regions:
            parts.append("changed regions: " + ", ".join(self.regions[:10]))
        if not parts:
            parts.append("bytes differ")
        return f"{self.path}: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class ManifestDiff:
    """All differences; empty means every byte matches."""

    files: tuple[FileChange, ...] = ()
    """Changed files, sorted by path."""
    settings: tuple[str, ...] = field(default_factory=tuple)
    """Differences in how the manifests were built (algorithm, ignore list)."""

    @property
    def empty(self) -> bool:
        """True when nothing differs."""
        return not self.files and not self.settings

    def to_dict(self) -> dict[str, Any]:
        """JSON form for reports."""
        return {
            "files": [f.to_dict() for f in self.files],
            "added": [f.path for f in self.files if f.kind == "added"],
            "removed": [f.path for f in self.files if f.kind == "removed"],
            "changed": [f.path for f in self.files if f.kind == "changed"],
            "settings": list(self.settings),
        }


def diff_manifests(signed: Manifest, current: Manifest) -> ManifestDiff:
    """Compare the signed manifest with one built from disk with the same settings."""
    settings = []
    if signed.algorithm != current.algorithm:
        settings.append(f"hash algorithm {signed.algorithm} vs {current.algorithm}")
    changes: list[FileChange] = []
    for path in sorted(set(signed.files) | set(current.files)):
        old, new = signed.files.get(path), current.files.get(path)
        if old is None:
            changes.append(FileChange(path, "added", None, new))
        elif new is None:
            changes.append(FileChange(path, "removed", old, None))
        elif old.digest != new.digest or old.size != new.size:
            changes.append(diff_files(path, old, new))
    return ManifestDiff(tuple(changes), tuple(settings))


def diff_files(path: str, old: FileEntry, new: FileEntry) -> FileChange:
    """Name the tensors and regions that differ between two versions of one file."""
    tensors: list[TensorChange] = []
    for name in list(old.tensors) + [n for n in new.tensors if n not in old.tensors]:
        before, after = old.tensors.get(name), new.tensors.get(name)
        if before is None:
            tensors.append(TensorChange(name, "added", new=after))
        elif after is None:
            tensors.append(TensorChange(name, "removed", old=before))
        else:
            fields = _tensor_fields(before, after)
            if fields:
                tensors.append(TensorChange(name, "changed", tuple(fields), before, after))
    tensor_labels = {f"tensor:{name}" for name in (*old.tensors, *new.tensors)}
    storage_labels = _storage_labels(old) | _storage_labels(new)
    regions = [
        label
        for label in _changed_labels(old, new)
        if label not in tensor_labels and label not in storage_labels
    ]
    return FileChange(path, "changed", old, new, tuple(tensors), tuple(regions))


def _tensor_fields(before: TensorEntry, after: TensorEntry) -> list[str]:
    fields = []
    if before.dtype != after.dtype:
        fields.append("dtype")
    if before.shape != after.shape:
        fields.append("shape")
    if dict(before.geometry) != dict(after.geometry):
        fields.append("geometry")
    if before.digest != after.digest and not fields:
        fields.append("data")
    elif before.digest != after.digest and before.digest and after.digest:
        # dtype/shape changes change the digest by construction; data may differ too,
        # which only an element comparison (--against) can tell.
        pass
    if before.digest is None and after.digest is None and before.note != after.note:
        fields.append("data")
    return fields


def _storage_labels(entry: FileEntry) -> set[str]:
    """Span labels that hold tensor bytes: PyTorch storages are named by member."""
    labels: set[str] = set()
    for tensor in entry.tensors.values():
        storage = tensor.geometry.get("storage") if tensor.geometry else None
        if storage is not None:
            labels.update(
                span.label
                for span in entry.spans
                if span.label.startswith("member:") and span.label.endswith(f"/data/{storage}")
            )
    return labels


def _label_digests(entry: FileEntry) -> Mapping[str, tuple[str, ...]]:
    result: dict[str, list[str]] = {}
    for span in entry.spans:
        if span.label.startswith("gap@"):
            result.setdefault("gap", []).append(span.digest)
        else:
            result.setdefault(span.label, []).append(span.digest)
    return {label: tuple(digests) for label, digests in result.items()}


def _changed_labels(old: FileEntry, new: FileEntry) -> list[str]:
    before, after = _label_digests(old), _label_digests(new)
    labels = list(before) + [label for label in after if label not in before]
    return [label for label in labels if before.get(label) != after.get(label)]
