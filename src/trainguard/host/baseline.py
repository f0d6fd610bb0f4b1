"""Host baselines: the signed record that ``host check`` compares against.

A baseline is JSON::

    {"format": "trainguard-host-baseline-v1", "created": ..., "host": ..., "root": "/",
     "setuid_paths": [...], "entries": {key: entry}, "signature": {...}}

The signature (Ed25519, ``signing_input("trainguard-host-baseline-v1", body)``)
matters because the baseline is the one thing a root-level intruder would edit
to hide his key; keep the private key off the host and check with the public key.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.errors import HostError
from trainguard.core.keys import SigningKey, sign_document, verify_document
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
    return sign_document(baseline, key, BASELINE_FORMAT)


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
    signed_by = None
    if public is not None:
        signed_by = verify_document(value, public, BASELINE_FORMAT, str(path), "baseline")
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
