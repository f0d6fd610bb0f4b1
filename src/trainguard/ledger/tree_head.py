"""Signed tree heads: an Ed25519 signature over (size, root, time, key id).

A signed head commits the signer to the first ``size`` entries of the ledger: any
later edit, deletion, insertion or reordering among them changes the root. A head
kept somewhere the saboteur cannot write (exported with ``trainguard ledger export``,
mailed, committed to another repository) also makes truncation of the whole ledger
evident. The signature covers ``signing_input("trainguard-tree-head-v1", {...})`` so
it cannot be replayed as a manifest signature or the other way round.
"""

from __future__ import annotations

import base64
import binascii
import json
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.canonical import signing_input
from trainguard.core.errors import LedgerError, SignatureError
from trainguard.core.keys import SigningKey, key_id, verify_signature
from trainguard.ledger.merkle import HASH_SIZE

HEAD_DOMAIN: Final = "trainguard-tree-head-v1"


@dataclass(frozen=True, slots=True)
class SignedTreeHead:
    """A signed commitment to the first ``size`` entries of a ledger."""

    size: int
    """Number of entries covered (entries 1..size)."""
    root_hex: str
    """Hex RFC 6962 Merkle tree hash of those entries."""
    time: float
    """Unix time of signing."""
    key_id: str
    """Id (hex SHA-256 of the DER public key) of the key that signed."""
    signature_b64: str
    """Base64 Ed25519 signature over :meth:`signed_bytes`."""

    @property
    def root(self) -> bytes:
        """The root hash as bytes."""
        return bytes.fromhex(self.root_hex)

    def body(self) -> dict[str, Any]:
        """The signed fields."""
        return {"size": self.size, "root": self.root_hex, "time": self.time, "key_id": self.key_id}

    def signed_bytes(self) -> bytes:
        """Exactly what the signature covers."""
        return signing_input(HEAD_DOMAIN, self.body())

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``trainguard ledger export`` writes this)."""
        return {"format": HEAD_DOMAIN, **self.body(), "signature": self.signature_b64}

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "tree head") -> SignedTreeHead:
        """Parse and validate a head; never returns a half-valid object.

        Raises:
            LedgerError: a field is missing or malformed (the message names it).
        """
        if not isinstance(data, Mapping):
            raise LedgerError(f"{source}: not a JSON object")
        if data.get("format", HEAD_DOMAIN) != HEAD_DOMAIN:
            raise LedgerError(f"{source}: format is {data.get('format')!r}, not {HEAD_DOMAIN}")
        size, root, when = data.get("size"), data.get("root"), data.get("time")
        kid, sig = data.get("key_id"), data.get("signature")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise LedgerError(f"{source}: 'size' must be a non-negative integer")
        if not isinstance(root, str) or len(root) != 2 * HASH_SIZE:
            raise LedgerError(f"{source}: 'root' must be {2 * HASH_SIZE} hex digits")
        try:
            bytes.fromhex(root)
        except ValueError as exc:
            raise LedgerError(f"{source}: 'root' is not hex") from exc
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise LedgerError(f"{source}: 'time' must be a number")
        if not isinstance(kid, str) or not kid:
            raise LedgerError(f"{source}: 'key_id' must be a string")
        if not isinstance(sig, str):
            raise LedgerError(f"{source}: 'signature' must be a base64 string")
        return cls(size, root.lower(), float(when), kid, sig)

    @classmethod
    def from_path(cls, path: Path) -> SignedTreeHead:
        """Read a head written by ``trainguard ledger export``.

        Raises:
            LedgerError: unreadable or malformed file.
        """
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise LedgerError(f"{path}: cannot read tree head: {exc.strerror}") from exc
        except ValueError as exc:
            raise LedgerError(f"{path}: not a JSON tree head ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    def verify_signature(self, public_key: ed25519.Ed25519PublicKey) -> None:
        """Raise :class:`SignatureError` unless the head is signed by ``public_key``."""
        expected = key_id(public_key)
        if self.key_id != expected:
            raise SignatureError(
                f"tree head at size {self.size} names key {self.key_id[:16]}, "
                f"not the given key {expected[:16]}"
            )
        try:
            signature = base64.b64decode(self.signature_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"tree head at size {self.size}: signature is not base64") from exc
        verify_signature(public_key, signature, self.signed_bytes())


def sign_tree_head(
    key: SigningKey, size: int, root: bytes, *, time: float | None = None
) -> SignedTreeHead:
    """Sign the root of the first ``size`` entries."""
    unsigned = SignedTreeHead(
        size=size,
        root_hex=root.hex(),
        time=_time.time() if time is None else float(time),
        key_id=key.key_id,
        signature_b64="",
    )
    signature = base64.b64encode(key.sign(unsigned.signed_bytes())).decode("ascii")
    return SignedTreeHead(size, unsigned.root_hex, unsigned.time, unsigned.key_id, signature)
