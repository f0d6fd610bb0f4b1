"""trainguard keygen / sign / verify: exit codes and outputs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from tests.factories.manifest_models import flip_byte, safetensors_offset
from trainguard.cli import main


def test_keygen_writes_private_0600_and_pub(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k"
    assert main(["keygen", "--out", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["keygen", "--out", str(key)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["keygen", "--out", str(tmp_path / "e"), "--ecdsa"]) == 0
    assert stat.S_IMODE((tmp_path / "e").stat().st_mode) == 0o600


def test_sign_verify_exit_codes(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = tmp_path / "k", tmp_path / "k.pub"
    assert main(["keygen", "--out", str(key)]) == 0
    assert main(["sign", str(model_dir), "--key", str(key), "--step", "3", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["verify", str(model_dir), "--key", str(pub), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("OK:")

    target = model_dir / "model.safetensors"
    flip_byte(target, safetensors_offset(target, "layers.0.bias", 2))
    assert main(["verify", str(model_dir), "--key", str(pub), "--format", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["ok"] is False
    assert body["diff"]["files"][0]["tensors"][0]["name"] == "layers.0.bias"
    assert body["findings"][0]["kind"] == "weights.tampered"

    assert main(["verify", str(model_dir), "--key", str(pub), "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["runs"][0]["results"][0]["ruleId"] == "weights.tampered"

    assert main(["verify", str(model_dir), "--key", str(pub)]) == 1
    assert "layers.0.bias" in capsys.readouterr().out


def test_verify_input_errors_exit_2(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = tmp_path / "k", tmp_path / "k.pub"
    main(["keygen", "--out", str(key)])
    capsys.readouterr()
    # no signature yet
    assert main(["verify", str(model_dir), "--key", str(pub)]) == 2
    assert "signature not found" in capsys.readouterr().err
    main(["sign", str(model_dir), "--key", str(key), "--no-progress"])
    # key file that is not a key
    bad = tmp_path / "bad.pub"
    bad.write_text("nope")
    assert main(["verify", str(model_dir), "--key", str(bad)]) == 2
    # missing model path
    assert main(["verify", str(tmp_path / "absent"), "--key", str(pub)]) == 2
    # ECDSA key for a trainguard signature
    main(["keygen", "--out", str(tmp_path / "e"), "--ecdsa"])
    assert main(["verify", str(model_dir), "--key", str(tmp_path / "e.pub")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "needs the Ed25519 public key" in err


def test_wrong_key_exits_1(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["keygen", "--out", str(tmp_path / "a")])
    main(["keygen", "--out", str(tmp_path / "b")])
    main(["sign", str(model_dir), "--key", str(tmp_path / "a"), "--no-progress"])
    assert main(["verify", str(model_dir), "--key", str(tmp_path / "b.pub")]) == 1
    assert "not by the given key" in capsys.readouterr().out


def test_after_rollback_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    main(["keygen", "--out", str(key)])
    old, new = tmp_path / "old", tmp_path / "new"
    for path, value in ((old, b"1"), (new, b"2")):
        path.mkdir()
        (path / "w.bin").write_bytes(value * 32)
    main(["sign", str(old), "--key", str(key), "--step", "1", "--no-progress"])
    old_sig = old / "trainguard.sig.json"
    assert (
        main(
            [
                "sign",
                str(new),
                "--key",
                str(key),
                "--step",
                "2",
                "--parent",
                str(old_sig),
                "--no-progress",
            ]
        )
        == 0
    )
    pub = str(tmp_path / "k.pub")
    assert main(["verify", str(new), "--key", pub, "--after", str(old_sig)]) == 0
    capsys.readouterr()
    assert (
        main(["verify", str(old), "--key", pub, "--after", str(new / "trainguard.sig.json")]) == 1
    )
    assert "[step.rollback]" in capsys.readouterr().out


def test_model_signing_format_cli(model_dir: Path, tmp_path: Path) -> None:
    model_signing = pytest.importorskip("model_signing")
    key = tmp_path / "e"
    main(["keygen", "--out", str(key), "--ecdsa"])
    sig = model_dir / "model.sig"
    assert (
        main(
            [
                "sign",
                str(model_dir),
                "--key",
                str(key),
                "--format",
                "model-signing",
                "-o",
                str(sig),
                "--no-progress",
            ]
        )
        == 0
    )
    model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=tmp_path / "e.pub"
    ).verify(model_dir, sig)
    assert (
        main(["verify", str(model_dir), "--key", str(tmp_path / "e.pub"), "--sig", str(sig)]) == 0
    )
