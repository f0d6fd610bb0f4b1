"""`trainguard env ...` exit codes and output formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.factories.env_sitepackages import fake_interpreter, make_dist
from trainguard.cli import main
from trainguard.core.keys import generate_key, write_keypair


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    make_dist(
        site,
        "alpha",
        "1.0",
        {"alpha/__init__.py": b"A = 1\n", "alpha/core.py": b"def f():\n    return 1\n"},
    )
    import trainguard.env.interpreter as interpreter

    monkeypatch.setattr(interpreter, "current_interpreter", lambda: fake_interpreter(site))
    for name in (
        "LD_PRELOAD",
        "LD_AUDIT",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONWARNINGS",
        "PYTHONSTARTUP",
        "LD_LIBRARY_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    return site


def test_verify_clean_then_tampered(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "verify", "--no-progress", "--jobs", "1"]) == 0
    assert "verified 1 distributions" in capsys.readouterr().out
    (site / "alpha" / "core.py").write_text("def f():\n    return 2\n")
    assert main(["env", "verify", "--no-progress", "--format", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert [f["kind"] for f in body["findings"]] == ["env.modified_file"]
    assert body["summary"]["distributions"] == 1
    assert main(["env", "verify", "--no-progress", "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["runs"][0]["results"][0]["ruleId"] == "env.modified_file"
    assert main(["env", "verify", "--no-progress", "--fail-on", "critical"]) == 0


def test_verify_usage_errors(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "verify", "--dist", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trainguard: error: no installed distribution named 'nope'")
    assert main(["env", "verify", "--python", "/nonexistent/python"]) == 2
    assert "no such interpreter" in capsys.readouterr().err
    assert main(["env", "verify", "--jobs", "0"]) == 2
    assert main(["env"]) == 2


def test_startup_command(
    site: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["env", "startup"]) == 0
    assert "no start-up injection found" in capsys.readouterr().out
    monkeypatch.setenv("LD_PRELOAD", "/tmp/libhook.so")
    assert main(["env", "startup", "--format", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["findings"][0]["evidence"]["variable"] == "LD_PRELOAD"


def test_snapshot_and_diff(site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_path = tmp_path / "k"
    write_keypair(generate_key(), key_path)
    lock = tmp_path / "lock.json"
    assert (
        main(
            [
                "env",
                "snapshot",
                "--out",
                str(lock),
                "--key",
                str(key_path),
                "--no-progress",
                "--jobs",
                "1",
            ]
        )
        == 0
    )
    assert main(["env", "diff", str(lock), "--key", f"{key_path}.pub", "--no-progress"]) == 0
    assert "no differences" in capsys.readouterr().out
    (site / "alpha" / "core.py").write_text("def f():\n    return 3\n")
    assert main(["env", "diff", str(lock), "live", "--format", "json", "--no-progress"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["diff"]["changed_files"][0]["path"] == "alpha/core.py"
    lock2 = tmp_path / "lock2.json"
    # The live environment no longer verifies against RECORD: the snapshot says so (exit 1).
    assert main(["env", "snapshot", "--out", str(lock2), "--no-progress", "--jobs", "1"]) == 1
    assert main(["env", "diff", str(lock), str(lock2)]) == 1
    assert main(["env", "diff", str(lock2), "--key", f"{key_path}.pub"]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["env", "diff", str(tmp_path / "missing.json")]) == 2


def test_git_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["env", "git", str(tmp_path)]) == 2
    assert "not a git repository" in capsys.readouterr().err


def test_python_option_queries_interpreter(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["env", "startup", "--python", sys.executable, "--format", "json"])
    body = json.loads(capsys.readouterr().out)
    assert rc in (0, 1)
    assert body["interpreter"]["magic"]
    assert Path(body["interpreter"]["executable"]).name.startswith("python")
