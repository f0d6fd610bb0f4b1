"""`trainguard scan` contract: JSON shape, exit codes, formats, allow list, config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories import archives as af
from tests.factories import checkpoints as cf
from trainguard.cli import main


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "model.pt").write_bytes(cf.torch_save_bytes({"w": 1}))
    (tmp_path / "config.pkl").write_bytes(cf.pickle_with_user_class())
    return tmp_path


def test_json_contract_and_exit_codes(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", str(tree), "--format", "json", "--no-progress"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert set(body) == {"files", "summary"}
    assert body["summary"] == {"safe": 1, "unknown": 1, "malicious": 0, "error": 0}
    for entry in body["files"]:
        assert set(entry) == {"path", "format", "verdict", "findings"}
        for finding in entry["findings"]:
            assert {"rule", "severity", "message", "member", "global"} <= set(finding)
    assert main(["scan", str(tree), "--fail-on", "malicious", "--no-progress"]) == 0


def test_allow_and_config(tree: Path, tmp_path: Path) -> None:
    assert main(["scan", str(tree), "--allow", "mypkg.model.Config", "--no-progress"]) == 0
    config = tmp_path / "tg.toml"
    config.write_text('[scan]\nallow = ["mypkg.model.Config"]\n')
    assert main(["scan", str(tree), "--config", str(config), "--no-progress"]) == 0


def test_malicious_text_and_sarif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "weights.safetensors"
    evil.write_bytes(af.os_system_payload(str(tmp_path / "PWNED")))
    assert main(["scan", str(evil), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "malicious" in captured.out and "os.system" in captured.out
    assert "1 malicious" in captured.err
    assert main(["scan", str(evil), "--format", "sarif", "--fail-on", "malicious"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["runs"][0]["results"]
    assert not (tmp_path / "PWNED").exists()


def test_error_always_fails(tmp_path: Path) -> None:
    bad = tmp_path / "broken.pt"
    bad.write_bytes(cf.torch_save_bytes({"w": 1})[:200])
    assert main(["scan", str(bad), "--fail-on", "malicious", "--no-progress"]) == 1


def test_missing_path_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "/no/such/file.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]


def test_bad_allow_is_usage_error(tree: Path) -> None:
    assert main(["scan", str(tree), "--allow", "os.system"]) == 2
    assert main(["scan", str(tree), "--allow", "not a name"]) == 2


def test_output_file(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "scan.json"
    main(["scan", str(tree / "model.pt"), "--format", "json", "-o", str(out)])
    assert json.loads(out.read_text())["summary"]["safe"] == 1
