"""Interop with the real OpenSSF model-signing package (key method), both directions."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.factories.manifest_models import flip_byte, safetensors_offset
from trainguard.manifest import sign_path, verify_path
from trainguard.manifest.modelsigning import EXTENSION_KEY, generate_ec_key, write_ec_keypair

model_signing = pytest.importorskip("model_signing")


@pytest.fixture(params=["P-256", "P-384"])
def ec_keypair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    return write_ec_keypair(generate_ec_key(request.param), tmp_path / f"ec-{request.param}.key")


def _their_verify(model: Path, sig: Path, pub: Path) -> None:
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(model, sig)


def _their_sign(model: Path, sig: Path, key: Path) -> None:
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[sig.name])
    model_signing.signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(
        hashing
    ).sign(model, sig)


def test_we_sign_they_verify(model_dir: Path, ec_keypair: tuple[Path, Path]) -> None:
    from trainguard.manifest.modelsigning import load_ec_private

    sig = model_dir / "model.sig"
    sign_path(model_dir, load_ec_private(ec_keypair[0]), output=sig, step=7, run="r")
    _their_verify(model_dir, sig, ec_keypair[1])
    payload = json.loads(base64.b64decode(json.loads(sig.read_text())["dsseEnvelope"]["payload"]))
    ours = payload["predicate"][EXTENSION_KEY]
    assert ours["step"] == 7 and "layers.0.weight" in ours["files"]["model.safetensors"]["tensors"]
    assert verify_path(model_dir, ec_keypair[1], sig).ok

    target = model_dir / "model.safetensors"
    flip_byte(target, safetensors_offset(target, "embed.weight", 3))
    with pytest.raises(ValueError, match=r"Hash mismatch for 'model\.safetensors'"):
        _their_verify(model_dir, sig, ec_keypair[1])
    result = verify_path(model_dir, ec_keypair[1], sig)
    assert not result.ok
    [change] = result.diff.files
    assert [t.name for t in change.tensors] == ["embed.weight"]


def test_we_sign_single_file_they_verify(model_dir: Path, ec_keypair: tuple[Path, Path]) -> None:
    from trainguard.manifest.modelsigning import load_ec_private

    path = model_dir / "model.safetensors"
    sig, _ = sign_path(path, load_ec_private(ec_keypair[0]))
    _their_verify(path, sig, ec_keypair[1])


def test_they_sign_we_verify(model_dir: Path, ec_keypair: tuple[Path, Path]) -> None:
    sig = model_dir / "model.sig"
    _their_sign(model_dir, sig, ec_keypair[0])
    result = verify_path(model_dir, ec_keypair[1], sig)
    assert result.ok and result.format == "model-signing" and result.signed is None
    (model_dir / "config.json").write_text('{"hidden": 64}\n')
    (model_dir / "stats.npz").unlink()
    bad = verify_path(model_dir, ec_keypair[1], sig)
    assert bad.diff.to_dict()["changed"] == ["config.json"]
    assert bad.diff.to_dict()["removed"] == ["stats.npz"]


def test_their_bundle_tampered_or_wrong_key(model_dir: Path, tmp_path: Path) -> None:
    key, pub = write_ec_keypair(generate_ec_key(), tmp_path / "a.key")
    _, other_pub = write_ec_keypair(generate_ec_key(), tmp_path / "b.key")
    sig = model_dir / "model.sig"
    _their_sign(model_dir, sig, key)
    assert not verify_path(model_dir, other_pub, sig).ok
    bundle = json.loads(sig.read_text())
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"][0]["digest"] = "00" * 32
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    sig.write_text(json.dumps(bundle))
    result = verify_path(model_dir, pub, sig)
    assert not result.ok and "signature does not verify" in result.findings[0].message


def test_they_sign_shards_we_verify(model_dir: Path, ec_keypair: tuple[Path, Path]) -> None:
    sig = model_dir / "model.sig"
    hashing = (
        model_signing.hashing.Config()
        .use_shard_serialization(shard_size=4096)
        .set_ignored_paths(paths=[sig.name])
    )
    model_signing.signing.Config().use_elliptic_key_signer(
        private_key=ec_keypair[0]
    ).set_hashing_config(hashing).sign(model_dir, sig)
    assert verify_path(model_dir, ec_keypair[1], sig).ok
    target = model_dir / "model.safetensors"
    flip_byte(target, 5000)
    bad = verify_path(model_dir, ec_keypair[1], sig)
    assert bad.diff.to_dict()["changed"] == ["model.safetensors:4096:8192"]
