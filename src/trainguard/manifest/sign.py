"""Ed25519 signatures over manifests, and the signature file that carries both.

The signature covers ``signing_input("trainguard-manifest-v1", manifest.to_dict())``:
the domain prefix stops a manifest signature from being replayed as any other
signed trainguard object (ledger tree heads use their own domain). The file::

    {"format": "trainguard-signature-v1",
     "domain": "trainguard-manifest-v1",
     "manifest": {...},
     "signature": {"algorithm": "ed25519", "key_id": "<sha256 of the DER key>",
                   "value": "<base64>"}}

Default locations (see :func:`default_signature_path`): ``DIR/trainguard.sig.json``
for a directory (excluded from its own manifest), ``FILE.tgsig.json`` next to a file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.canonical import signing_input
from trainguard.core.errors import InputError, ManifestError, SignatureError
from trainguard.core.keys import SigningKey, key_id, verify_signature
from trainguard.manifest.build import SIGNATURE_NAME
from trainguard.manifest.schema import MANIFEST_DOMAIN, Manifest

SIGNATURE_FORMAT: Final = "trainguard-signature-v1"
"""Value of ``format`` in our signature files."""

FILE_SIGNATURE_SUFFIX: Final = ".tgsig.json"
"""Suffix of the signature written next to a single signed file."""


def default_signature_path(model: Path) -> Path:
    """``DIR/trainguard.sig.json`` for a directory, ``FILE.tgsig.json`` for a file."""
    if model.is_dir():
        return model / SIGNATURE_NAME
    return model.with_name(model.name + FILE_SIGNATURE_SUFFIX)


def signature_relpath(model: Path, signature: Path) -> str | None:
    """The signature's path relative to a model directory, or None when outside it."""
    if not model.is_dir():
        return None
    try:
        return signature.resolve().relative_to(model.resolve()).as_posix()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """A parsed (not yet verified) signature file."""

    manifest: Manifest
    """The manifest it claims to sign."""
    key_id: str
    """Id of the key it names."""
    signature: bytes
    """Raw signature bytes."""
    source: str
    """Where it was read from, for messages."""

    def verify(self, public: ed25519.Ed25519PublicKey) -> None:
        """Raise :class:`SignatureError` unless the signature is valid for ``public``.

        Raises:
            SignatureError: Wrong key, or the manifest or signature was altered.
        """
        # 1. The key named in the file must be the key we were given: a clear message
        #    for the common mistake (wrong key) before the cryptographic check.
        expected = key_id(public)
        if self.key_id != expected:
            raise SignatureError(
                f"{self.source}: signed by key {self.key_id[:16]}, not by the given key "
                f"{expected[:16]}"
            )
        # 2. The signature must cover exactly this manifest in the manifest domain.
        message = signing_input(MANIFEST_DOMAIN, self.manifest.to_dict())
        try:
            verify_signature(public, self.signature, message)
        except SignatureError as exc:
            raise SignatureError(f"{self.source}: {exc}; the manifest was altered") from exc


def sign_manifest(manifest: Manifest, key: SigningKey) -> dict[str, Any]:
    """The signature file's JSON value for ``manifest`` signed with ``key``."""
    body = manifest.to_dict()
    signature = key.sign(signing_input(MANIFEST_DOMAIN, body))
    return {
        "format": SIGNATURE_FORMAT,
        "domain": MANIFEST_DOMAIN,
        "manifest": body,
        "signature": {
            "algorithm": "ed25519",
            "key_id": key.key_id,
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def write_json_atomic(value: Any, path: Path) -> None:
    """Write JSON to ``path`` via a temporary file and rename (no half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write signature: {exc.strerror}") from exc


def read_json(path: Path) -> Any:
    """Parse a signature file's JSON.

    Raises:
        InputError: The file is missing or unreadable (exit 2).
        SignatureError: It is not JSON (a damaged or forged signature: a finding).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: signature not found; sign first or pass --sig") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read signature: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SignatureError(f"{path}: signature file is not JSON: {exc}") from exc


def parse_signature(data: Any, source: str) -> SignedManifest:
    """Validate the structure of a trainguard signature file.

    Raises:
        SignatureError: Anything is missing or malformed.
    """
    if not isinstance(data, dict) or data.get("format") != SIGNATURE_FORMAT:
        raise SignatureError(f"{source}: not a {SIGNATURE_FORMAT} file")
    if data.get("domain") != MANIFEST_DOMAIN:
        raise SignatureError(f"{source}: signature domain {data.get('domain')!r} is not ours")
    sig = data.get("signature")
    if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519":
        raise SignatureError(f"{source}: signature algorithm must be ed25519")
    kid, value = sig.get("key_id"), sig.get("value")
    if not isinstance(kid, str) or not isinstance(value, str):
        raise SignatureError(f"{source}: signature needs key_id and value")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{source}: signature value is not base64") from exc
    try:
        manifest = Manifest.from_dict(data.get("manifest"), source=source)
    except ManifestError as exc:
        raise SignatureError(str(exc)) from exc
    return SignedManifest(manifest, kid, raw, source)


def load_signature(path: Path) -> SignedManifest:
    """Read and parse a trainguard signature file (does not verify it).

    Raises:
        InputError: Missing or unreadable.
        SignatureError: Malformed.
    """
    return parse_signature(read_json(path), str(path))


def load_verified(path: Path, public: ed25519.Ed25519PublicKey) -> SignedManifest:
    """Read a signature file and verify it: for ``--parent`` and ``--after`` references.

    Raises:
        InputError: Missing or unreadable.
        SignatureError: Malformed or not valid for ``public``.
    """
    signed = load_signature(path)
    signed.verify(public)
    return signed
