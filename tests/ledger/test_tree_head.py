"""Signed tree heads: round trip, every signed field bound, strict parsing."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from trainguard.core.canonical import signing_input
from trainguard.core.errors import LedgerError, SignatureError
from trainguard.core.keys import SigningKey, generate_key
from trainguard.ledger.tree_head import HEAD_DOMAIN, SignedTreeHead, sign_tree_head

ROOT = bytes(range(32))


def test_round_trip(tmp_path: Path, signing_key: SigningKey) -> None:
    head = sign_tree_head(signing_key, 12, ROOT, time=1700000000.5)
    path = tmp_path / "head.json"
    path.write_text(head.to_json())
    back = SignedTreeHead.from_path(path)
    assert back == head
    back.verify_signature(signing_key.public)


@pytest.mark.parametrize(
    "change",
    [{"size": 13}, {"root_hex": "00" * 32}, {"time": 1.0}],
)
def test_every_field_is_signed(signing_key: SigningKey, change: dict) -> None:
    head = sign_tree_head(signing_key, 12, ROOT)
    with pytest.raises(SignatureError):
        dataclasses.replace(head, **change).verify_signature(signing_key.public)


def test_other_key_and_other_domain_fail(signing_key: SigningKey) -> None:
    head = sign_tree_head(signing_key, 3, ROOT)
    with pytest.raises(SignatureError, match="names key"):
        head.verify_signature(generate_key().public)
    # A signature made over the same fields in another domain is not a head signature.
    other = signing_key.sign(signing_input("trainguard-manifest-v1", head.body()))
    forged = dataclasses.replace(head, signature_b64=base64.b64encode(other).decode())
    with pytest.raises(SignatureError):
        forged.verify_signature(signing_key.public)
    assert head.signed_bytes().startswith(HEAD_DOMAIN.encode() + b" ")


def test_garbage_signature(signing_key: SigningKey) -> None:
    head = dataclasses.replace(sign_tree_head(signing_key, 3, ROOT), signature_b64="%%%")
    with pytest.raises(SignatureError, match="base64"):
        head.verify_signature(signing_key.public)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([], "JSON object"),
        ({"format": "other"}, "format"),
        ({"size": -1}, "size"),
        ({"size": 1, "root": "zz" * 32}, "hex"),
        ({"size": 1, "root": "ab"}, "root"),
        ({"size": 1, "root": "ab" * 32, "time": "now"}, "time"),
        ({"size": 1, "root": "ab" * 32, "time": 1, "key_id": ""}, "key_id"),
        ({"size": 1, "root": "ab" * 32, "time": 1, "key_id": "k", "signature": 5}, "signature"),
    ],
)
def test_strict_parsing(data: object, needle: str) -> None:
    with pytest.raises(LedgerError, match=needle):
        SignedTreeHead.from_dict(data)  # type: ignore[arg-type]


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot read"):
        SignedTreeHead.from_path(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LedgerError, match="not a JSON"):
        SignedTreeHead.from_path(bad)
