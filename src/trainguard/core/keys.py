"""Ed25519 keys: generate, load, sign, verify. The only module that touches crypto keys.

Private keys are PEM (PKCS#8, unencrypted unless a password is given) written with
mode 0600; public keys are PEM SubjectPublicKeyInfo. A key id is the SHA-256 of the
DER public key, so a signature names the key that made it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.canonical import signing_input
from trainguard.core.errors import InputError, SignatureError


def key_id(public_key: ed25519.Ed25519PublicKey) -> str:
    """Stable identifier of a public key: hex SHA-256 of its DER encoding."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private Ed25519 key and its id."""

    private: ed25519.Ed25519PrivateKey
    """The key itself."""

    @property
    def public(self) -> ed25519.Ed25519PublicKey:
        """Its public half."""
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        """Id of the public half."""
        return key_id(self.public)

    def sign(self, message: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature over ``message``."""
        return self.private.sign(message)


def generate_key() -> SigningKey:
    """A fresh random Ed25519 key."""
    return SigningKey(ed25519.Ed25519PrivateKey.generate())


def write_keypair(key: SigningKey, out: Path) -> tuple[Path, Path]:
    """Write ``out`` (private, mode 0600) and ``out.pub``; refuse to overwrite."""
    pub_path = out.with_name(out.name + ".pub")
    for path in (out, pub_path):
        if path.exists():
            raise InputError(f"{path}: already exists; refusing to overwrite a key")
    pem = key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    pub_path.write_bytes(
        key.public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return out, pub_path


def load_signing_key(path: Path) -> SigningKey:
    """Read a private Ed25519 key; errors name the file and what is wrong."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read key: {exc.strerror}") from exc
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: not a PEM private key (unencrypted PKCS#8 expected)") from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise InputError(f"{path}: not an Ed25519 key")
    return SigningKey(private)


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """Read a public Ed25519 key; a private key file is accepted and its half taken."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read key: {exc.strerror}") from exc
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: not a PEM public or private key") from exc
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise InputError(f"{path}: not an Ed25519 key") from None
        return private.public_key()
    if not isinstance(public, ed25519.Ed25519PublicKey):
        raise InputError(f"{path}: not an Ed25519 public key")
    return public


def verify_signature(public: ed25519.Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is valid; never returns a bool."""
    try:
        public.verify(signature, message)
    except InvalidSignature as exc:
        raise SignatureError(f"signature does not verify with key {key_id(public)[:16]}") from exc


def sign_document(document: Mapping[str, Any], key: SigningKey, domain: str) -> dict[str, Any]:
    """``document`` with a ``signature`` member over everything else (JSON files we write).

    ``domain`` separates document types, so a signed snapshot can never pass as a
    signed baseline.
    """
    body = {k: v for k, v in document.items() if k != "signature"}
    signature = key.sign(signing_input(domain, body))
    return {
        **body,
        "signature": {
            "algorithm": "ed25519",
            "key_id": key.key_id,
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def verify_document(
    document: Mapping[str, Any],
    public: ed25519.Ed25519PublicKey,
    domain: str,
    source: str,
    noun: str,
) -> str:
    """Check the signature of :func:`sign_document`; return the signer's key id.

    Raises:
        SignatureError: Unsigned, signed by another key, or altered after signing.
    """
    # 1. There must be a signature, by the key we were given.
    sig = document.get("signature")
    if not isinstance(sig, Mapping):
        raise SignatureError(f"{source}: {noun} is not signed; create it with --key")
    expected = key_id(public)
    if sig.get("key_id") != expected:
        raise SignatureError(
            f"{source}: signed by key {str(sig.get('key_id'))[:16]}, not by {expected[:16]}"
        )
    # 2. The signature must cover exactly the rest of the document.
    try:
        raw = base64.b64decode(str(sig.get("value", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{source}: signature value is not base64") from exc
    body = {k: v for k, v in document.items() if k != "signature"}
    try:
        verify_signature(public, raw, signing_input(domain, body))
    except SignatureError as exc:
        raise SignatureError(f"{source}: {exc}; the {noun} was altered") from exc
    return expected
