"""Signed weight manifests: parallel hashing, per-tensor digests, verify with a diff.

Library entry points (the CLI's ``keygen``/``sign``/``verify`` and the guard use them):

- :func:`build_manifest` — hash a model directory or file into a manifest;
- :func:`sign_manifest` — the signature file's JSON for a manifest and an Ed25519 key;
- :func:`sign_path` — build, sign and write in one call (Ed25519 or model-signing ECDSA);
- :func:`load_signature` — parse a trainguard signature file;
- :func:`verify_path` — verify a path: ``VerifyResult`` with ``ok``, ``findings``, ``diff``.

See docs/manifest.md for the format and the digest definitions.
"""

from __future__ import annotations

from trainguard.manifest.api import sign_path
from trainguard.manifest.build import SIGNATURE_NAME, build_manifest
from trainguard.manifest.diff import ManifestDiff, diff_manifests
from trainguard.manifest.schema import Manifest
from trainguard.manifest.sign import default_signature_path, load_signature, sign_manifest
from trainguard.manifest.verify import VerifyResult, verify_path

__all__ = [
    "SIGNATURE_NAME",
    "Manifest",
    "ManifestDiff",
    "VerifyResult",
    "build_manifest",
    "default_signature_path",
    "diff_manifests",
    "load_signature",
    "sign_manifest",
    "sign_path",
    "verify_path",
]
