"""``trainguard report``: exit codes, the JSON summary, ledger verification and keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import ledger_tamper
from tests.ledger.conftest import fresh_database
from tests.report.ledgers import RUN, build_run, ledger_url
from trainguard.cli import main
from trainguard.core.keys import generate_key, write_keypair
from trainguard.ledger import open_ledger


def report(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["report", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_summary_and_fail_on(
    sabotaged_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "r.html"
    code, out, _ = report([str(sabotaged_run), "-o", str(out_file), "--format", "json"], capsys)
    assert code == 1  # a critical and two high findings; default --fail-on high
    body = json.loads(out)
    assert body["report"] == str(out_file) and body["bytes"] == len(out_file.read_bytes())
    assert body["findings"] == {"low": 0, "medium": 0, "high": 2, "critical": 1}
    assert body["ledger"]["status"] == "unsigned" and body["ledger"]["entries"] == body["events"]
    assert body["telemetry"]["replica_checks"] == 6 and body["telemetry"]["environment"] is True
    assert out_file.read_text().startswith("<!DOCTYPE html>")
    code, out, _ = report(
        [str(sabotaged_run), "-o", str(out_file), "--fail-on", "critical"], capsys
    )
    assert code == 1
    code, out, _ = report([str(sabotaged_run), "--fail-on", "critical", "--format", "text"], capsys)
    assert code == 1 and (sabotaged_run / "report.html").is_file()  # default output path
    assert "1 critical" in out


def test_clean_run_exits_zero(bare_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = report([str(bare_run)], capsys)
    assert code == 0
    assert out.strip().endswith("no findings; ledger unsigned")
    assert "ledger unsigned" in err


def test_input_errors_exit_two(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = report([str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such run directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = report([str(empty)], capsys)
    assert code == 2 and "no ledger.sqlite in this run directory" in err
    (empty / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
    code, _, err = report([str(empty)], capsys)
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    run_dir = build_run(tmp_path / "run", telemetry=False, sabotage=False)
    code, _, err = report([str(run_dir), "-o", str(tmp_path / "no" / "dir.html")], capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = report([str(run_dir), "--run", "nope"], capsys)
    assert code == 2 and "no events of run 'nope'" in err
    assert not (run_dir / "report.html").exists()


def test_tampered_ledger_renders_with_a_banner_and_exits_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = build_run(tmp_path / "run", telemetry=False, sabotage=False)
    ledger_tamper.edit_payload(ledger_url(run_dir), 5, {"installed": False})
    out_file = tmp_path / "r.html"
    code, out, err = report([str(run_dir), "-o", str(out_file), "--format", "json"], capsys)
    assert code == 1 and "ledger failed verification" in err
    body = json.loads(out)
    assert body["ledger"]["status"] == "failed"
    assert [p["kind"] for p in body["ledger"]["problems"]] == ["ledger.entry_modified"]
    html = out_file.read_text()
    assert '<div class="banner failed" id="integrity" data-status="failed">' in html
    assert "entry 5" in html and "FAILED verification" in html


def test_signed_ledger_with_and_without_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_key()
    _, pub = write_keypair(key, tmp_path / "ledger.key")
    run_dir = build_run(
        tmp_path / "run", telemetry=False, sabotage=False, key=key, head_interval=10
    )
    code, out, err = report([str(run_dir), "--key", str(pub), "--format", "json"], capsys)
    assert code == 0, err
    ledger = json.loads(out)["ledger"]
    assert ledger["status"] == "verified" and ledger["heads_checked"] >= 1
    # Without the key, the heads cannot be checked: the page says NOT verified.
    code, out, err = report([str(run_dir), "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["ledger"]["status"] == "unchecked_heads"
    assert "NOT verified" in (run_dir / "report.html").read_text()
    # The wrong key is a usage error, not tampering.
    _, other = write_keypair(generate_key(), tmp_path / "other.key")
    code, _, err = report([str(run_dir), "--key", str(other)], capsys)
    assert code == 2 and "not the given key" in err
    # A head kept elsewhere (--head) catches truncation that removed the stored heads too.
    with open_ledger(ledger_url(run_dir), signing_key=key) as ledger:
        head_file = tmp_path / "head.json"
        head_file.write_text(ledger.sign_head().to_json())
    ledger_tamper.truncate(ledger_url(run_dir), 15)
    code, out, err = report([str(run_dir), "--key", str(pub), "--format", "json"], capsys)
    # The heads left in the ledger still verify: only the head kept elsewhere shows the cut.
    assert code == 0 and json.loads(out)["ledger"]["entries"] == 15
    args = [str(run_dir), "--key", str(pub), "--head", str(head_file), "--format", "json"]
    code, out, err = report(args, capsys)
    ledger = json.loads(out)["ledger"]
    assert code == 1 and ledger["status"] == "failed"
    assert "ledger.truncated" in {p["kind"] for p in ledger["problems"]}


def test_report_does_not_import_torch(sabotaged_run: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from trainguard.cli import main\n"
        f"rc = main(['report', {str(sabotaged_run)!r}, '-o', {str(tmp_path / 'x.html')!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert (tmp_path / "x.html").is_file()


@pytest.mark.postgres
def test_cluster_ledger_in_postgres(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_database(postgres_url)
    run_dir = build_run(tmp_path / "run", url=url)
    build_run(tmp_path / "other", url=url, sabotage=False)  # same run id, appended again
    assert not (run_dir / "ledger.sqlite").exists()
    out_file = tmp_path / "r.html"
    args = [str(run_dir), "--ledger", url, "--run", RUN, "-o", str(out_file), "--format", "json"]
    code, out, err = report(args, capsys)
    body = json.loads(out)
    assert code == 1, err
    assert body["ledger"]["status"] == "unsigned" and body["runs"] == [RUN]
    assert body["findings"] == {"low": 0, "medium": 0, "high": 2, "critical": 1}
    assert "postgresql://" in out_file.read_text()
