"""``trainguard lint`` through ``main([...])``: exit codes, formats, errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from trainguard.cli import main
from trainguard.lint import RULE_IDS

SABOTAGE = (
    "import random, time\n"
    "import torch.distributed as dist\n"
    "if dist.get_world_size() > 256:\n"
    "    time.sleep(random.random())\n"
)
LOW_ONLY = "import torch\ndef save(m):\n    torch.save(m.state_dict(), '/checkpoints/m.pt')\n"


@pytest.fixture
def sabotage(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(SABOTAGE)
    return path


def test_text_output_and_exit_1(sabotage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(sabotage)]) == 1
    out, err = capsys.readouterr()
    assert f"{sabotage}:4: HIGH lint.conditional-sleep:" in out
    assert "    time.sleep(random.random())" in out
    assert "1 finding(s) (1 high)" in err


def test_json_output(sabotage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--format", "json", str(sabotage)]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["summary"] == {"low": 0, "medium": 0, "high": 1, "critical": 0}
    (finding,) = body["findings"]
    assert finding["rule"] == finding["kind"] == "lint.conditional-sleep"
    assert finding["location"] == f"{sabotage}:4"
    assert finding["evidence"]["code"] == "time.sleep(random.random())"


def test_sarif_output(sabotage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--format", "sarif", str(sabotage)]) == 1
    sarif = json.loads(capsys.readouterr().out)
    (result,) = sarif["runs"][0]["results"]
    assert result["ruleId"] == "lint.conditional-sleep"
    assert result["level"] == "error"
    region = result["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 4}


def test_fail_on_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "save.py"
    path.write_text(LOW_ONLY)
    assert main(["lint", str(path)]) == 0
    assert main(["lint", "--fail-on", "low", str(path)]) == 1
    capsys.readouterr()


def test_clean_file_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ok.py"
    path.write_text("import torch\nprint(torch.ones(2))\n")
    assert main(["lint", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no findings"


def test_parse_error_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.py"
    path.write_text("def f(:\n")
    assert main(["lint", str(path)]) == 1
    assert "lint.parse-error" in capsys.readouterr().out


def test_missing_path_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(tmp_path / "nope.py")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    missing = tmp_path / "nope.py"
    hint = "no such file or directory; pass existing files or folders"
    assert err == [f"trainguard: error: {missing}: {hint}"]


def test_no_path_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint"]) == 2
    assert "give at least one PATH" in capsys.readouterr().err


def test_unknown_rule_exit_2(sabotage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--rule", "lint.nope", str(sabotage)]) == 2
    assert "unknown lint rule 'lint.nope'" in capsys.readouterr().err


def test_rule_filter(sabotage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--rule", "lint.unsafe-load", str(sabotage)]) == 0
    capsys.readouterr()


def test_list_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--list-rules", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rules"]
    assert [row["id"] for row in rows] == list(RULE_IDS)
    assert all(row["rationale"] and row["fix"] for row in rows)


def test_output_file(sabotage: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(["lint", "--format", "json", "-o", str(out), str(sabotage)]) == 1
    assert json.loads(out.read_text())["findings"][0]["rule"] == "lint.conditional-sleep"
    capsys.readouterr()


def test_terminal_escapes_in_code_are_neutralised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "esc.py"
    path.write_text('import pickle\npickle.loads(b"\\x1b[31m" + "\x1b[2J")\n')
    assert main(["lint", str(path)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert "\\x1b[2J" in out


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_diff_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("import torch\nstate = torch.load('c.pt')\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "base")
    assert main(["lint", "--diff", "HEAD", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "no findings"
    (tmp_path / "a.py").write_text("import torch\nstate = torch.load('c.pt')\n" + SABOTAGE)
    assert main(["lint", "--diff", "HEAD", "--format", "json", str(tmp_path)]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["diff"] == "HEAD"
    assert [f["rule"] for f in body["findings"]] == ["lint.conditional-sleep"]


def test_diff_bad_revision_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "base")
    assert main(["lint", "--diff", "nope", str(tmp_path)]) == 2
    assert "nope: not a commit" in capsys.readouterr().err
