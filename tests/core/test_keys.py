"""Ed25519 key handling: files, permissions, and verification that raises."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from trainguard.core.canonical import canonical_json, signing_input
from trainguard.core.errors import InputError, SignatureError
from trainguard.core.keys import (
    generate_key,
    load_public_key,
    load_signing_key,
    verify_signature,
    write_keypair,
)


def test_keypair_files_and_signature_round_trip(tmp_path: Path) -> None:
    key = generate_key()
    private_path, public_path = write_keypair(key, tmp_path / "k")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    loaded = load_signing_key(private_path)
    public = load_public_key(public_path)
    message = signing_input("trainguard-test-v1", {"b": 1, "a": [1, 2]})
    verify_signature(public, loaded.sign(message), message)
    with pytest.raises(SignatureError):
        verify_signature(public, loaded.sign(message), message + b"x")


def test_refuses_to_overwrite_and_rejects_garbage(tmp_path: Path) -> None:
    key = generate_key()
    write_keypair(key, tmp_path / "k")
    with pytest.raises(InputError, match="already exists"):
        write_keypair(key, tmp_path / "k")
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(InputError, match="not a PEM"):
        load_signing_key(tmp_path / "junk")
    with pytest.raises(InputError, match="cannot read key"):
        load_public_key(tmp_path / "missing")


def test_canonical_json_is_order_independent_and_domain_separated() -> None:
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1}) == b'{"a":2,"b":1}'
    assert signing_input("d1", {}) != signing_input("d2", {})
    with pytest.raises(ValueError, match=r"NaN|not JSON compliant"):
        canonical_json({"x": float("nan")})
