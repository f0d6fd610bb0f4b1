"""Host baselines: the signed record that ``host check`` compares against.

A baseline is JSON::

    {"format": "trainguard-host-baseline-v1", "created": ..., "host": ..., "root": "/",
     "setuid_paths": [...], "entries": {key: entry}, "signature": {...}}

The signature (Ed25519, ``signing_input("trainguard-host-baseline-v1", body)``)
matters because the baseline is the one thing a root-level intruder would edit
to hide his key; keep the private key off the host and check with the public key.
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.canonical import signing_input
from trainguard.core.errors import HostError, SignatureError
from trainguard.core.keys import SigningKey, key_id, verify_signature
from trainguard.host.collect import HostEntry, collect_entries, owner_names, with_owner_names

BASELINE_FORMAT: Final = "trainguard-host-baseline-v1"
"""``format`` of a baseline file, and its signing domain."""

MAX_BASELINE_BYTES: Final = 1024 * 1024 * 1024
"""Largest baseline read."""


@dataclass(frozen=True, slots=True)
class Baseline:
    """A parsed baseline."""

    root: str
    """The root it was taken under."""
    setuid_paths: tuple[str, ...]
    """Directories searched for setuid files."""
    entries: Mapping[str, HostEntry]
    """Every entry by key."""
    created: float
    """When it was taken."""
    host: str
    """Host name it was taken on."""
    signed_by: str | None
    """Key id of a verified signature, or None when unsigned or not checked."""


def build_baseline(root: Path, setuid_paths: Iterable[str] | None = None) -> dict[str, Any]:
    """Collect the host below ``root`` into a JSON-ready (unsigned) baseline."""
    collected = collect_entries(root, setuid_paths)
    entries = with_owner_names(collected, owner_names(root))
    from trainguard.host.collect import DEFAULT_SETUID_PATHS

    return {
        "format": BASELINE_FORMAT,
        "created": time.time(),
        "host": socket.gethostname(),
        "root": str(root),
        "setuid_paths": list(setuid_paths)
        if setuid_paths is not None
        else list(DEFAULT_SETUID_PATHS),
        "entries": {key: entry.to_dict() for key, entry in entries.items()},
    }


def sign_baseline(baseline: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    """The baseline with a ``signature`` over everything else."""
    body = {k: v for k, v in baseline.items() if k != "signature"}
    signature = key.sign(signing_input(BASELINE_FORMAT, body))
    return {
        **body,
        "signature": {
            "algorithm": "ed25519",
            "key_id": key.key_id,
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def _verify(value: Mapping[str, Any], public: ed25519.Ed25519PublicKey, source: str) -> str:
    # 1. Signed, and by the key we were given.
    sig = value.get("signature")
    if not isinstance(sig, Mapping):
        raise SignatureError(f"{source}: baseline is not signed; create it with --key")
    expected = key_id(public)
    if sig.get("key_id") != expected:
        raise SignatureError(
            f"{source}: signed by key {str(sig.get('key_id'))[:16]}, not by {expected[:16]}"
        )
    # 2. The signature covers exactly the rest of the file.
    try:
        raw = base64.b64decode(str(sig.get("value", "")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{source}: signature value is not base64") from exc
    body = {k: v for k, v in value.items() if k != "signature"}
    try:
        verify_signature(public, raw, signing_input(BASELINE_FORMAT, body))
    except SignatureError as exc:
        raise SignatureError(f"{source}: {exc}; the baseline was altered") from exc
    return expected


def load_baseline(path: Path, public: ed25519.Ed25519PublicKey | None = None) -> Baseline:
    """Read and validate a baseline; verify its signature when a key is given.

    Raises:
        HostError: Missing, unreadable or malformed.
        SignatureError: ``public`` given and the signature does not verify.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BASELINE_BYTES + 1)
    except OSError as exc:
        raise HostError(f"{path}: cannot read baseline: {exc.strerror}") from exc
    if len(data) > MAX_BASELINE_BYTES:
        raise HostError(f"{path}: larger than {MAX_BASELINE_BYTES} bytes; not a baseline")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HostError(f"{path}: not JSON; write one with `trainguard host baseline`") from exc
    if not isinstance(value, dict) or value.get("format") != BASELINE_FORMAT:
        raise HostError(f"{path}: not a {BASELINE_FORMAT} file; write one with `host baseline`")
    signed_by = _verify(value, public, str(path)) if public is not None else None
    raw_entries = value.get("entries")
    if not isinstance(raw_entries, dict):
        raise HostError(f"{path}: baseline has no 'entries' table")
    try:
        entries = {str(k): HostEntry.from_dict(str(k), v) for k, v in raw_entries.items()}
        setuid_paths = tuple(str(p) for p in value.get("setuid_paths") or ())
        created = float(value.get("created") or 0.0)
    except (KeyError, TypeError, ValueError) as exc:
        raise HostError(f"{path}: malformed baseline entry ({exc}); recreate the baseline") from exc
    return Baseline(
        root=str(value.get("root") or "/"),
        setuid_paths=setuid_paths,
        entries=entries,
        created=created,
        host=str(value.get("host") or ""),
        signed_by=signed_by,
    )
