"""Verify a model against its signed manifest: every byte, the lineage, and the diff.

:func:`verify_path` is the library entry point (the guard calls it before loading a
checkpoint). It returns a :class:`VerifyResult` whose ``ok`` is True only when the
signature is valid for the given key *and* every byte of every file matches (and,
with ``after``, the checkpoint is not older than and descends from the reference).
Everything else is a finding:

- ``weights.tampered``: the signature does not verify (wrong key, altered manifest,
  damaged file), a file was added, removed or changed (naming its tensors), or the
  tree holds a symlink or special file;
- ``step.rollback``: the checkpoint's step is lower than the reference's, or the
  reference is not among its ancestors.

Input problems (model path or signature file missing, unusable key) raise
:class:`~trainguard.core.errors.InputError` (CLI exit 2).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from trainguard.core.errors import InputError, SignatureError
from trainguard.core.findings import FINDING_KINDS, Finding
from trainguard.core.keys import key_id, load_public_key
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.manifest import modelsigning as ms
from trainguard.manifest.build import build_with_tree
from trainguard.manifest.diff import FileChange, ManifestDiff, TensorChange, diff_manifests
from trainguard.manifest.elements import differing_elements
from trainguard.manifest.schema import Manifest
from trainguard.manifest.sign import (
    default_signature_path,
    parse_signature,
    read_json,
    signature_relpath,
)

_logger = logging.getLogger(__name__)

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """Outcome of verifying one model path."""

    ok: bool
    """True only when the signature is valid and every byte (and the lineage) matches."""
    findings: tuple[Finding, ...]
    """Why it is not ok; empty when ok."""
    diff: ManifestDiff
    """Files and tensors that differ from the signed manifest."""
    signed: Manifest | None
    """The signed trainguard manifest (None when the signature failed or carries none)."""
    format: str
    """``trainguard`` or ``model-signing``."""
    signature: str
    """Signature file used."""
    checked_files: int = 0
    """Files whose digests were compared."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the CLI's ``--format json`` body."""
        return {
            "ok": self.ok,
            "format": self.format,
            "signature": self.signature,
            "checked_files": self.checked_files,
            "step": self.signed.step if self.signed else None,
            "run": self.signed.run if self.signed else None,
            "diff": self.diff.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
        }


def load_any_public_key(path: Path) -> PublicKey:
    """An Ed25519 (trainguard) or ECDSA (model-signing) public key from a PEM file."""
    try:
        return load_public_key(path)
    except InputError as exc:
        if "Ed25519" not in str(exc):
            raise
    return ms.load_ec_public(path)


def _tampered(message: str, path: str, evidence: dict[str, Any] | None = None) -> Finding:
    return Finding(
        rule="weights.tampered",
        severity=FINDING_KINDS["weights.tampered"].severity,
        message=message,
        path=path,
        time=time.time(),
        evidence=evidence or {},
    )


def _rollback(message: str, path: str, step: int | None, evidence: dict[str, Any]) -> Finding:
    return Finding(
        rule="step.rollback",
        severity=FINDING_KINDS["step.rollback"].severity,
        message=message,
        path=path,
        step=step,
        time=time.time(),
        evidence=evidence,
    )


def verify_path(
    path: Path | str,
    public_key: PublicKey | Path | str,
    signature_path: Path | str | None = None,
    *,
    after: Path | str | None = None,
    against: Path | str | None = None,
    workers: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> VerifyResult:
    """Verify ``path`` (directory or file) against its signature.

    Args:
        path: The model directory or file.
        public_key: The signer's public key, or a path to its PEM (Ed25519 for
            trainguard signatures, ECDSA for model-signing bundles).
        signature_path: The signature; defaults to :func:`default_signature_path`.
        after: A signature of an earlier checkpoint that this one must descend from
            and not be older than (rollback check).
        against: A copy of the signed version, to count differing elements.
        workers: Hashing threads (default: all cores).
        progress: Observer of hashing progress.

    Raises:
        InputError: The path, the signature file or the key cannot be used.
    """
    model = Path(path)
    if not model.exists() and not model.is_symlink():
        raise InputError(f"{model}: no such file or directory")
    key = (
        load_any_public_key(Path(public_key)) if isinstance(public_key, str | Path) else public_key
    )
    sig_path = Path(signature_path) if signature_path is not None else default_signature_path(model)
    sig_rel = signature_relpath(model, sig_path)
    extra_ignore = [sig_rel] if sig_rel else []
    where = str(model)
    try:
        data = read_json(sig_path)
    except SignatureError as exc:
        return _failed(exc, where, "unknown", sig_path)
    fmt = "model-signing" if ms.is_bundle(data) else "trainguard"
    _check_key_kind(key, fmt, sig_path)
    try:
        if fmt == "trainguard":
            assert isinstance(key, ed25519.Ed25519PublicKey)
            signed_obj = parse_signature(data, str(sig_path))
            signed_obj.verify(key)
            signed: Manifest | None = signed_obj.manifest
            opened = None
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            opened = ms.decode_statement(ms.open_bundle(data, key, str(sig_path)), str(sig_path))
            signed = opened.manifest
    except SignatureError as exc:
        return _failed(exc, where, fmt, sig_path)
    findings: list[Finding] = []
    if opened is None:
        assert signed is not None
        diff, odd = _native_diff(model, signed, extra_ignore, workers, progress)
        checked = len(signed.files)
    else:
        diff, odd = _interop_diff(model, opened, extra_ignore, workers, progress)
        checked = len(opened.resources)
    if against is not None and not diff.empty:
        diff = _count_elements(diff, model, Path(against))
    findings.extend(
        _tampered(change.describe(), _file_path(model, change.path), change.to_dict())
        for change in diff.files
    )
    findings.extend(
        _tampered(f"{name}: not a regular file; refused", _file_path(model, name.split(" (")[0]))
        for name in odd
    )
    findings.extend(_tampered(f"manifest settings differ: {s}", where) for s in diff.settings)
    if after is not None:
        findings.extend(rollback_findings(signed, _load_reference(Path(after), key), where))
    return VerifyResult(not findings, tuple(findings), diff, signed, fmt, str(sig_path), checked)


def _file_path(model: Path, rel: str) -> str:
    return str(model) if rel == "." else str(model / rel)


def _check_key_kind(key: PublicKey, fmt: str, sig_path: Path) -> None:
    if fmt == "trainguard" and not isinstance(key, ed25519.Ed25519PublicKey):
        raise InputError(f"{sig_path}: a trainguard signature needs the Ed25519 public key")
    if fmt == "model-signing" and not isinstance(key, ec.EllipticCurvePublicKey):
        raise InputError(
            f"{sig_path}: a model-signing bundle needs the ECDSA public key (keygen --ecdsa)"
        )


def _failed(exc: SignatureError, where: str, fmt: str, sig_path: Path) -> VerifyResult:
    finding = _tampered(
        f"signature does not verify: {exc.diagnostics()}", where, {"signature": str(sig_path)}
    )
    return VerifyResult(False, (finding,), ManifestDiff(), None, fmt, str(sig_path))


def _native_diff(
    model: Path,
    signed: Manifest,
    extra_ignore: Sequence[str],
    workers: int | None,
    progress: Progress,
) -> tuple[ManifestDiff, list[str]]:
    current, odd = build_with_tree(
        model,
        algorithm=signed.algorithm,
        ignore=[*signed.ignore, *extra_ignore],
        block_size=signed.block_size,
        workers=workers,
        progress=progress,
    )
    return diff_manifests(signed, current), [f"{o.relpath} ({o.kind})" for o in odd]


def _interop_diff(
    model: Path,
    opened: ms.OpenedStatement,
    extra_ignore: Sequence[str],
    workers: int | None,
    progress: Progress,
) -> tuple[ManifestDiff, list[str]]:
    found, odd = ms.current_resources(
        model, opened, extra_ignore, workers=workers, progress=progress
    )
    diff = ms.resource_diff(opened.resources, found)
    if diff.empty or opened.manifest is None:
        return diff, odd
    # Name the changed tensors: rebuild our manifest of the files as they are now.
    detailed, _ = _native_diff(model, opened.manifest, extra_ignore, workers, progress)
    return (detailed if not detailed.empty else diff), odd


def _count_elements(diff: ManifestDiff, model: Path, against: Path) -> ManifestDiff:
    if not against.exists():
        raise InputError(f"{against}: --against copy not found")
    files = []
    for change in diff.files:
        old_file = against if change.path == "." else against / change.path
        new_file = model if change.path == "." else model / change.path
        tensors: list[TensorChange] = []
        for tensor in change.tensors:
            counted = None
            if tensor.kind == "changed" and old_file.is_file() and new_file.is_file():
                counted = differing_elements(old_file, new_file, tensor.name)
            if counted is not None:
                tensor = dataclasses.replace(
                    tensor, differing_elements=counted[0], total_elements=counted[1]
                )
            tensors.append(tensor)
        files.append(dataclasses.replace(change, tensors=tuple(tensors)))
    return dataclasses.replace(diff, files=tuple(files))


def _load_reference(path: Path, key: PublicKey) -> Manifest:
    """The verified trainguard manifest of an ``--after`` / ``--parent`` signature.

    Raises:
        InputError: Missing, unreadable, not verifiable with ``key`` or without lineage.
    """
    data = read_json(path)
    try:
        if ms.is_bundle(data):
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise InputError(f"{path}: a model-signing bundle needs the ECDSA public key")
            manifest = ms.decode_statement(ms.open_bundle(data, key, str(path)), str(path)).manifest
        else:
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise InputError(f"{path}: a trainguard signature needs the Ed25519 public key")
            signed = parse_signature(data, str(path))
            signed.verify(key)
            manifest = signed.manifest
    except SignatureError as exc:
        raise InputError(f"reference signature rejected: {exc.diagnostics()}") from exc
    if manifest is None:
        raise InputError(f"{path}: carries no trainguard manifest (no step or lineage)")
    return manifest


def rollback_findings(current: Manifest | None, reference: Manifest, where: str) -> list[Finding]:
    """``step.rollback`` findings unless ``current`` is ``reference`` or descends from it."""
    ref_digest = reference.digest()
    evidence: dict[str, Any] = {
        "reference_step": reference.step,
        "reference_run": reference.run,
        "reference_digest": ref_digest,
    }
    if current is None:
        return [
            _rollback(
                "the signature carries no trainguard manifest (step, lineage); cannot rule out "
                "a rollback",
                where,
                None,
                evidence,
            )
        ]
    evidence.update(step=current.step, run=current.run, digest=current.digest())
    findings = []
    if reference.step is not None and (current.step is None or current.step < reference.step):
        findings.append(
            _rollback(
                f"checkpoint is at step {current.step}, older than the reference step "
                f"{reference.step}",
                where,
                current.step,
                evidence,
            )
        )
    lineage = {a.digest for a in current.ancestors}
    if current.digest() != ref_digest and ref_digest not in lineage:
        findings.append(
            _rollback(
                f"checkpoint (run {current.run}, step {current.step}) does not descend from the "
                f"reference (run {reference.run}, step {reference.step}, "
                f"manifest {ref_digest[:16]})",
                where,
                current.step,
                evidence,
            )
        )
    return findings


def reference_manifest(path: Path, key: PublicKey) -> Manifest:
    """Public wrapper of the verified-reference loader (used by ``sign --parent``)."""
    return _load_reference(path, key)


def signer_key_id(key: PublicKey) -> str:
    """A printable key id for either key kind."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key_id(key)
    return ms.key_hint(key)


__all__ = [
    "FileChange",
    "PublicKey",
    "VerifyResult",
    "load_any_public_key",
    "reference_manifest",
    "rollback_findings",
    "signer_key_id",
    "verify_path",
]
