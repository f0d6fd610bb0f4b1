"""Environment snapshots (``env snapshot``) and their comparison (``env diff``).

A snapshot records the interpreter, every distribution with its version, and with
``digests=True`` the SHA-256 of every installed file as read and verified against
RECORD, plus the CUDA/NCCL/cuDNN shared libraries. Signed with the manifest key
(Ed25519 over ``signing_input("trainguard-env-snapshot-v1", body)``), it is the
out-of-band copy of RECORD that an insider with write access to site-packages
cannot rewrite: he can forge a RECORD line, not our signature.
"""

from __future__ import annotations

import fnmatch
import json
import platform
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.errors import EnvError
from trainguard.core.findings import Finding, Severity
from trainguard.core.keys import SigningKey, sign_document, verify_document
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.env.interpreter import Interpreter, current_interpreter
from trainguard.env.record import find_distributions

SNAPSHOT_FORMAT: Final = "trainguard-env-snapshot-v1"
"""``format`` of a snapshot file, and its signing domain."""

NATIVE_PATTERNS: Final = ("libcudart*", "libnccl*", "libcudnn*")
"""Shared libraries recorded separately: the GPU math and communication stack."""

MAX_SNAPSHOT_BYTES: Final = 512 * 1024 * 1024
"""Largest snapshot file read."""


def snapshot_environment(
    interpreter: Interpreter | None = None,
    *,
    digests: bool = False,
    dists: Sequence[str] | None = None,
    jobs: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> dict[str, Any]:
    """A JSON-ready snapshot of an environment.

    Without ``digests`` it lists versions only and costs a directory listing and the
    METADATA headers (tens of milliseconds): cheap enough for the guard at run start.

    Args:
        interpreter: Whose environment (default: the running one).
        digests: Also hash every installed file (runs :func:`verify_environment`).
        dists: Restrict to these distributions.
        jobs: Worker processes for hashing.
        progress: Observer of the hashing.

    Returns:
        The snapshot (unsigned).
    """
    interp = interpreter or current_interpreter()
    snapshot: dict[str, Any] = {
        "format": SNAPSHOT_FORMAT,
        "created": time.time(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "interpreter": interp.to_dict(),
    }
    if not digests:
        distributions: dict[str, Any] = {}
        for dist in find_distributions(interp.path_dirs()):
            if dist.key in distributions:
                continue  # shadowed by an earlier sys.path entry: not importable
            distributions[dist.key] = {
                "name": dist.name,
                "version": dist.version,
                "installer": dist.installer,
                "site_dir": str(dist.site_dir),
            }
        if dists:
            from trainguard.env.record import normalize_name

            keep = {normalize_name(d) for d in dists}
            distributions = {k: v for k, v in distributions.items() if k in keep}
        snapshot["distributions"] = distributions
        return snapshot
    from trainguard.env.verify import verify_environment

    report = verify_environment(
        interp, dists=dists, jobs=jobs, collect_digests=True, progress=progress
    )
    by_key = {d.dist_info.name: d for d in find_distributions(interp.path_dirs())}
    distributions = {}
    native: list[dict[str, Any]] = []
    for result in report.distributions:
        from trainguard.env.record import normalize_name

        key = normalize_name(result.name)
        if key in distributions:
            continue
        files = report.digests.get(key, {})
        installer = next(
            (
                d.installer
                for d in by_key.values()
                if d.key == key and str(d.site_dir) == result.site_dir
            ),
            None,
        )
        distributions[key] = {
            "name": result.name,
            "version": result.version,
            "installer": installer,
            "site_dir": result.site_dir,
            "files": {path: [digest, size] for path, (digest, size) in sorted(files.items())},
        }
        for path, (digest, size) in sorted(files.items()):
            base = path.rsplit("/", 1)[-1]
            if any(fnmatch.fnmatchcase(base, pattern) for pattern in NATIVE_PATTERNS):
                native.append({"distribution": key, "path": path, "sha256": digest, "size": size})
    snapshot["distributions"] = distributions
    snapshot["native_libraries"] = native
    snapshot["findings"] = [finding.to_dict() for finding in report.findings]
    return snapshot


def sign_snapshot(snapshot: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """The snapshot with a ``signature`` member over everything else."""
    return sign_document(snapshot, key, SNAPSHOT_FORMAT)


def verify_snapshot(
    snapshot: Mapping[str, Any], public: ed25519.Ed25519PublicKey, source: str
) -> None:
    """Raise unless ``snapshot`` carries a valid signature by ``public``.

    Raises:
        SignatureError: Unsigned, signed by another key, or altered after signing.
    """
    verify_document(snapshot, public, SNAPSHOT_FORMAT, source, "snapshot")


def load_snapshot(path: Path, public: ed25519.Ed25519PublicKey | None = None) -> dict[str, Any]:
    """Read a snapshot file, verifying its signature when a key is given.

    Raises:
        EnvError: Missing, unreadable or not a snapshot.
        SignatureError: ``public`` given and the signature does not verify.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SNAPSHOT_BYTES + 1)
    except OSError as exc:
        raise EnvError(f"{path}: cannot read snapshot: {exc.strerror}") from exc
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise EnvError(f"{path}: larger than {MAX_SNAPSHOT_BYTES} bytes; not a snapshot")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvError(
            f"{path}: not JSON; give a file written by `trainguard env snapshot`"
        ) from exc
    if not isinstance(value, dict) or value.get("format") != SNAPSHOT_FORMAT:
        raise EnvError(f"{path}: not a {SNAPSHOT_FORMAT} file; write one with `env snapshot`")
    if not isinstance(value.get("distributions"), dict):
        raise EnvError(f"{path}: snapshot has no 'distributions' table")
    if public is not None:
        verify_snapshot(value, public, str(path))
    return value


@dataclass(frozen=True, slots=True)
class SnapshotDiff:
    """Differences between two snapshots (``old`` -> ``new``)."""

    added: tuple[tuple[str, str], ...] = ()
    """Distributions only in new: (name, version)."""
    removed: tuple[tuple[str, str], ...] = ()
    """Distributions only in old: (name, version)."""
    upgraded: tuple[tuple[str, str, str], ...] = ()
    """Same distribution, other version: (name, old version, new version)."""
    changed_files: tuple[tuple[str, str, str, str], ...] = ()
    """(distribution, path, old sha256, new sha256), same version."""
    added_files: tuple[tuple[str, str], ...] = ()
    """(distribution, path) only in new, same version."""
    removed_files: tuple[tuple[str, str], ...] = ()
    """(distribution, path) only in old, same version."""
    interpreter: tuple[str, str] | None = None
    """(old, new) interpreter version line when it changed."""
    native_changed: tuple[tuple[str, str | None, str | None], ...] = field(default=())
    """(library path, old sha256, new sha256) of CUDA/NCCL/cuDNN libraries."""

    @property
    def empty(self) -> bool:
        """True when the environments are the same."""
        return not (
            self.added
            or self.removed
            or self.upgraded
            or self.changed_files
            or self.added_files
            or self.removed_files
            or self.interpreter
            or self.native_changed
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "added": [{"name": n, "version": v} for n, v in self.added],
            "removed": [{"name": n, "version": v} for n, v in self.removed],
            "upgraded": [{"name": n, "old": o, "new": v} for n, o, v in self.upgraded],
            "changed_files": [
                {"distribution": d, "path": p, "old_sha256": o, "new_sha256": n}
                for d, p, o, n in self.changed_files
            ],
            "added_files": [{"distribution": d, "path": p} for d, p in self.added_files],
            "removed_files": [{"distribution": d, "path": p} for d, p in self.removed_files],
            "interpreter": (
                {"old": self.interpreter[0], "new": self.interpreter[1]}
                if self.interpreter
                else None
            ),
            "native_changed": [
                {"path": p, "old_sha256": o, "new_sha256": n} for p, o, n in self.native_changed
            ],
        }

    def findings(self) -> list[Finding]:
        """The differences as ``env.modified_file`` findings (for SARIF and exit codes)."""
        now = time.time()
        out: list[Finding] = []

        def add(severity: Severity, message: str, path: str | None, **evidence: Any) -> None:
            out.append(
                Finding(
                    rule="env.modified_file",
                    severity=severity,
                    message=message,
                    path=path,
                    time=now,
                    evidence=evidence,
                )
            )

        if self.interpreter:
            add(
                Severity.MEDIUM,
                f"interpreter changed: {self.interpreter[0]} -> {self.interpreter[1]}",
                None,
                change="interpreter",
            )
        for name, version in self.added:
            add(Severity.MEDIUM, f"{name} {version} was installed", None, change="added")
        for name, version in self.removed:
            add(Severity.MEDIUM, f"{name} {version} was removed", None, change="removed")
        for name, old, new in self.upgraded:
            add(Severity.MEDIUM, f"{name} changed version {old} -> {new}", None, change="version")
        for dist, path, old_digest, new_digest in self.changed_files:
            add(
                Severity.HIGH,
                f"{dist}: {path} changed content at the same version",
                path,
                change="content",
                distribution=dist,
                old_sha256=old_digest,
                new_sha256=new_digest,
            )
        for dist, path in self.added_files:
            add(Severity.HIGH, f"{dist}: {path} appeared", path, change="file_added")
        for dist, path in self.removed_files:
            add(Severity.MEDIUM, f"{dist}: {path} disappeared", path, change="file_removed")
        for lib, lib_old, lib_new in self.native_changed:
            add(
                Severity.HIGH,
                f"native library {lib} changed",
                lib,
                change="native",
                old_sha256=lib_old,
                new_sha256=lib_new,
            )
        return out


def _files(entry: Mapping[str, Any]) -> dict[str, str] | None:
    files = entry.get("files")
    if not isinstance(files, Mapping):
        return None
    out: dict[str, str] = {}
    for path, value in files.items():
        if isinstance(value, list | tuple) and value:
            out[str(path)] = str(value[0])
    return out


def diff_snapshots(old: Mapping[str, Any], new: Mapping[str, Any]) -> SnapshotDiff:
    """Compare two snapshots. File digests are compared where both recorded them."""
    old_d: Mapping[str, Any] = old.get("distributions") or {}
    new_d: Mapping[str, Any] = new.get("distributions") or {}
    added = tuple(
        sorted(
            (str(new_d[k].get("name", k)), str(new_d[k].get("version")))
            for k in new_d.keys() - old_d.keys()
        )
    )
    removed = tuple(
        sorted(
            (str(old_d[k].get("name", k)), str(old_d[k].get("version")))
            for k in old_d.keys() - new_d.keys()
        )
    )
    upgraded: list[tuple[str, str, str]] = []
    changed: list[tuple[str, str, str, str]] = []
    added_files: list[tuple[str, str]] = []
    removed_files: list[tuple[str, str]] = []
    for key in sorted(old_d.keys() & new_d.keys()):
        a, b = old_d[key], new_d[key]
        name = str(b.get("name", key))
        if a.get("version") != b.get("version"):
            upgraded.append((name, str(a.get("version")), str(b.get("version"))))
            continue
        fa, fb = _files(a), _files(b)
        if fa is None or fb is None:
            continue
        changed.extend(
            (name, path, fa[path], fb[path])
            for path in sorted(fa.keys() & fb.keys())
            if fa[path] != fb[path]
        )
        added_files.extend((name, p) for p in sorted(fb.keys() - fa.keys()))
        removed_files.extend((name, p) for p in sorted(fa.keys() - fb.keys()))
    old_i = (old.get("interpreter") or {}).get("version")
    new_i = (new.get("interpreter") or {}).get("version")
    interpreter = (str(old_i), str(new_i)) if old_i != new_i else None
    native_old = {n["path"]: n.get("sha256") for n in old.get("native_libraries") or []}
    native_new = {n["path"]: n.get("sha256") for n in new.get("native_libraries") or []}
    native_changed = tuple(
        (path, native_old.get(path), native_new.get(path))
        for path in sorted(native_old.keys() | native_new.keys())
        if native_old.get(path) != native_new.get(path)
        and "native_libraries" in old
        and "native_libraries" in new
    )
    return SnapshotDiff(
        added=added,
        removed=removed,
        upgraded=tuple(upgraded),
        changed_files=tuple(changed),
        added_files=tuple(added_files),
        removed_files=tuple(removed_files),
        interpreter=interpreter,
        native_changed=native_changed,
    )
