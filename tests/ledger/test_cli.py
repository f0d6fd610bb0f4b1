"""``trainguard ledger verify/show/export/init-postgres``: exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories import ledger_tamper as tamper
from trainguard.cli import main
from trainguard.core.keys import SigningKey, generate_key, write_keypair
from trainguard.ledger import SignedTreeHead, open_ledger


@pytest.fixture
def ledger_file(tmp_path: Path, signing_key: SigningKey) -> Path:
    path = tmp_path / "ledger.sqlite"
    with open_ledger(path, signing_key=signing_key, head_interval=5) as ledger:
        for i in range(12):
            ledger.append("step", {"step": i}, run="run-a", rank=i % 2)
        ledger.append("finding", {"kind": "grad.anomaly", "message": "x"}, run="run-b", rank=1)
    return path


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("trainguard: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_verify_clean_exits_0(ledger_file: Path, key_files: tuple[Path, Path], capsys) -> None:
    _, pub = key_files
    assert main(["ledger", "verify", str(ledger_file), "--key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "13 entries" in out and "ledger.unsigned_tail" in out  # low: listed, not failing


def test_verify_fail_on_low(ledger_file: Path, key_files: tuple[Path, Path]) -> None:
    _, pub = key_files
    assert main(["ledger", "verify", str(ledger_file), "--key", str(pub), "--fail-on", "low"]) == 1


def test_verify_tampered_exits_1_json(
    ledger_file: Path, key_files: tuple[Path, Path], capsys
) -> None:
    _, pub = key_files
    tamper.edit_payload(f"sqlite:///{ledger_file}", 4, {"step": 99})
    code = main(["ledger", "verify", str(ledger_file), "--key", str(pub), "--format", "json"])
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["size"] == 13
    assert {"kind": "ledger.entry_modified", "seq": 4} in [
        {"kind": f["kind"], "seq": f["evidence"].get("seq")} for f in data["findings"]
    ]


def test_verify_sarif(ledger_file: Path, key_files: tuple[Path, Path], capsys) -> None:
    _, pub = key_files
    tamper.delete(f"sqlite:///{ledger_file}", 2)
    assert main(["ledger", "verify", str(ledger_file), "--key", str(pub), "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["runs"][0]["results"]


def test_verify_wrong_key_exits_2(ledger_file: Path, tmp_path: Path, capsys) -> None:
    _, other_pub = write_keypair(generate_key(), tmp_path / "other.key")
    assert main(["ledger", "verify", str(ledger_file), "--key", str(other_pub)]) == 2
    assert "not the given key" in one_error_line(capsys.readouterr().err)


def test_verify_unreadable_key_exits_2(ledger_file: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    assert main(["ledger", "verify", str(ledger_file), "--key", str(bad)]) == 2
    assert str(bad) in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "url", ["mysql://u@h/db", "sqlite://host/x.db", "/nonexistent/dir/ledger.sqlite"]
)
def test_bad_url_exits_2_one_line(url: str, key_files: tuple[Path, Path], capsys) -> None:
    _, pub = key_files
    assert main(["ledger", "verify", url, "--key", str(pub)]) == 2
    one_error_line(capsys.readouterr().err)
    assert main(["ledger", "show", url]) == 2
    one_error_line(capsys.readouterr().err)


def test_unreachable_postgres_exits_2(key_files: tuple[Path, Path], capsys) -> None:
    from tests.conftest import free_port

    url = f"postgresql://nobody@127.0.0.1:{free_port()}/ledger"
    assert main(["ledger", "show", url]) == 2
    assert "cannot connect" in one_error_line(capsys.readouterr().err)


def test_verify_with_kept_head_detects_truncation(
    ledger_file: Path, key_files: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    key, pub = key_files
    head = tmp_path / "head.json"
    assert main(["ledger", "export", str(ledger_file), "--key", str(key), "-o", str(head)]) == 0
    assert SignedTreeHead.from_path(head).size == 13
    tamper.truncate(f"sqlite:///{ledger_file}", 6)
    assert main(["ledger", "verify", str(ledger_file), "--key", str(pub)]) == 0  # alone: blind
    capsys.readouterr()
    code = main(["ledger", "verify", str(ledger_file), "--key", str(pub), "--head", str(head)])
    assert code == 1
    assert "ledger.truncated" in capsys.readouterr().out


def test_bad_head_file_exits_2(ledger_file: Path, key_files: tuple[Path, Path], tmp_path, capsys):
    _, pub = key_files
    head = tmp_path / "head.json"
    head.write_text('{"size": "many"}')
    assert main(["ledger", "verify", str(ledger_file), "--key", str(pub), "--head", str(head)]) == 2
    assert "size" in one_error_line(capsys.readouterr().err)


def test_export_refuses_a_tampered_ledger(
    ledger_file: Path, key_files: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    key, _ = key_files
    tamper.edit_payload(f"sqlite:///{ledger_file}", 3, {"step": -1})
    head = tmp_path / "head.json"
    assert main(["ledger", "export", str(ledger_file), "--key", str(key), "-o", str(head)]) == 1
    assert not head.exists()
    assert "ledger.entry_modified" in capsys.readouterr().err


def test_export_signs_an_unsigned_ledger(tmp_path: Path, key_files: tuple[Path, Path]) -> None:
    key, pub = key_files
    path = tmp_path / "plain.sqlite"
    with open_ledger(path) as ledger:  # the guard writes without a key
        ledger.append_many([{"kind": "step", "payload": {"i": i}} for i in range(7)])
    assert main(["ledger", "verify", str(path), "--key", str(pub)]) == 1  # ledger.unsigned
    head = tmp_path / "h.json"
    assert main(["ledger", "export", str(path), "--key", str(key), "-o", str(head)]) == 0
    assert main(["ledger", "verify", str(path), "--key", str(pub), "--fail-on", "low"]) == 0


def test_export_needs_a_private_key(ledger_file: Path, key_files, tmp_path, capsys) -> None:
    _, pub = key_files
    code = main(
        ["ledger", "export", str(ledger_file), "--key", str(pub), "-o", str(tmp_path / "h")]
    )
    assert code == 2
    one_error_line(capsys.readouterr().err)


def test_show_text_and_filters(ledger_file: Path, capsys) -> None:
    assert main(["ledger", "show", str(ledger_file), "--kind", "finding"]) == 0
    out = capsys.readouterr().out
    assert "grad.anomaly" in out and "run-b" in out and '"step"' not in out


def test_show_json(ledger_file: Path, capsys) -> None:
    url = f"sqlite:///{ledger_file}"
    assert main(["ledger", "show", url, "--run", "run-a", "--since", "3", "--format", "json"]) == 0
    events = json.loads(capsys.readouterr().out)
    assert [e["seq"] for e in events] == list(range(4, 13))
    assert all(e["run"] == "run-a" and e["kind"] == "step" for e in events)
    assert main(["ledger", "show", url, "--limit", "2", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_show_does_not_create_a_ledger(tmp_path: Path, capsys) -> None:
    path = tmp_path / "missing.sqlite"
    assert main(["ledger", "show", str(path)]) == 2
    assert not path.exists()
    one_error_line(capsys.readouterr().err)


def test_ledger_without_action_prints_help(capsys) -> None:
    assert main(["ledger"]) == 2
