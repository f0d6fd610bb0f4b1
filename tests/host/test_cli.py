"""`trainguard host ...` exit codes and formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories.host_tree import KEY_EVIL, build_host
from trainguard.cli import main
from trainguard.core.keys import generate_key, write_keypair


def test_baseline_check_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = build_host(tmp_path / "root")
    key = tmp_path / "team.key"
    write_keypair(generate_key(), key)
    base = tmp_path / "base.json"
    args = ["--root", str(root), "--setuid-path", "/usr/bin"]
    assert main(["host", "baseline", "--out", str(base), "--key", str(key), *args]) == 0
    assert (
        main(["host", "check", "--baseline", str(base), "--key", f"{key}.pub", "--root", str(root)])
        == 0
    )
    assert "0 findings" in capsys.readouterr().out
    keys = root / "home/alice/.ssh/authorized_keys"
    keys.write_text(keys.read_text() + KEY_EVIL + "\n")
    assert main(["host", "check", "--baseline", str(base), "--format", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert [f["kind"] for f in body["findings"]] == ["host.new_entry"]
    assert body["findings"][0]["severity"] == "critical"
    assert main(["host", "check", "--baseline", str(base), "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["runs"][0]["results"][0]["level"] == "error"
    assert main(["host", "check", "--baseline", str(base), "--fail-on", "critical"]) == 1


def test_low_findings_pass_default_threshold(tmp_path: Path) -> None:
    root = build_host(tmp_path / "root")
    base = tmp_path / "base.json"
    assert main(["host", "baseline", "--out", str(base), "--root", str(root)]) == 0
    (root / "etc/cron.d/backup").unlink()  # removal: low
    assert main(["host", "check", "--baseline", str(base)]) == 0
    assert main(["host", "check", "--baseline", str(base), "--fail-on", "low"]) == 1


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["host", "check", "--baseline", str(tmp_path / "missing.json")]) == 2
    assert "cannot read baseline" in capsys.readouterr().err
    assert (
        main(
            [
                "host",
                "baseline",
                "--out",
                str(tmp_path / "b.json"),
                "--root",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    assert "not a directory" in capsys.readouterr().err
    root = build_host(tmp_path / "root")
    base = tmp_path / "base.json"
    assert main(["host", "baseline", "--out", str(base), "--root", str(root)]) == 0
    other = tmp_path / "other.key"
    write_keypair(generate_key(), other)
    assert main(["host", "check", "--baseline", str(base), "--key", f"{other}.pub"]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["host"]) == 2
