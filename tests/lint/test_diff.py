"""``--diff REV``: only what a change introduced, in a real temporary git repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trainguard.core.errors import LintError
from trainguard.lint import lint_diff

BASE = """import time
import requests
import torch


def fetch(url):
    for attempt in range(3):
        try:
            return requests.get(url, timeout=5)
        except OSError:
            time.sleep(2 ** attempt)


def resume(path):
    return torch.load(path)
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "train.py").write_text(BASE)
    (tmp_path / "README.md").write_text("docs\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "base")
    return tmp_path


def test_unchanged_tree_reports_nothing(repo: Path) -> None:
    assert lint_diff([str(repo)], "HEAD") == []


def test_old_findings_are_not_reported_new_ones_are(repo: Path) -> None:
    changed = BASE + (
        "\n\ndef chaos(model, rank):\n"
        "    if rank == 3:\n"
        "        for p in model.parameters():\n"
        "            p.grad.mul_(-1)\n"
    )
    (repo / "train.py").write_text(changed)
    findings = lint_diff([str(repo)], "HEAD")
    assert [(f.rule, f.evidence["code"]) for f in findings] == [
        ("lint.grad-edit", "p.grad.mul_(-1)")
    ]
    assert findings[0].path == str(repo / "train.py")


def test_moved_code_is_not_new(repo: Path) -> None:
    lines = BASE.splitlines(keepends=True)
    resume_block = "".join(lines[-2:])
    moved = resume_block + "\n\n" + "".join(lines[:-2])
    (repo / "train.py").write_text(moved)
    assert lint_diff([str(repo)], "HEAD") == []


def test_new_condition_around_old_sleep_is_introduced(repo: Path) -> None:
    changed = BASE.replace(
        "            time.sleep(2 ** attempt)",
        "            if torch.distributed.get_world_size() > 256:\n"
        "                time.sleep(2 ** attempt)",
    )
    (repo / "train.py").write_text(changed)
    findings = lint_diff([str(repo)], "HEAD")
    assert [f.rule for f in findings] == ["lint.conditional-sleep"]


def test_remote_dataflow_change_is_introduced(repo: Path) -> None:
    (repo / "scale.py").write_text("import time\nn = 1\nif n > 256:\n    time.sleep(1)\n")
    _git(repo, "add", "scale.py")
    _git(repo, "commit", "-q", "-m", "scale")
    (repo / "scale.py").write_text(
        "import time\nimport torch.distributed as dist\nn = dist.get_world_size()\n"
        "if n > 256:\n    time.sleep(1)\n"
    )
    findings = lint_diff([str(repo)], "HEAD")
    assert [(f.rule, f.evidence["line"]) for f in findings] == [("lint.conditional-sleep", 5)]


def test_untracked_new_file_counts_as_added(repo: Path) -> None:
    (repo / "extra.py").write_text("import pickle\npickle.loads(b'')\n")
    findings = lint_diff([str(repo)], "HEAD")
    assert [f.rule for f in findings] == ["lint.unsafe-load"]


def test_code_moved_to_another_file_is_not_new(repo: Path) -> None:
    lines = BASE.splitlines(keepends=True)
    (repo / "train.py").write_text("".join(lines[:-3]))
    (repo / "ckpt.py").write_text("import torch\n\n\n" + "".join(lines[-2:]))
    assert lint_diff([str(repo)], "HEAD") == []


def test_parse_error_introduced_by_change(repo: Path) -> None:
    (repo / "train.py").write_text(BASE + "\ndef broken(:\n")
    findings = lint_diff([str(repo)], "HEAD")
    assert [f.rule for f in findings] == ["lint.parse-error"]


def test_path_filter_limits_the_diff(repo: Path) -> None:
    (repo / "sub").mkdir()
    (repo / "sub" / "a.py").write_text("import pickle\npickle.loads(b'')\n")
    (repo / "train.py").write_text(BASE + "\nimport os\nos.kill(1, 9)\n")
    findings = lint_diff([str(repo / "sub")], "HEAD")
    assert [f.rule for f in findings] == ["lint.unsafe-load"]


def test_unknown_revision_is_an_error(repo: Path) -> None:
    with pytest.raises(LintError, match="not a commit"):
        lint_diff([str(repo)], "no-such-branch")


def test_not_a_repository_is_an_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.py").write_text("x = 1\n")
    with pytest.raises(LintError, match="not inside a git repository"):
        lint_diff([str(plain)], "HEAD")


def test_older_revision(repo: Path) -> None:
    (repo / "train.py").write_text(BASE + "\nimport joblib\njoblib.load('m')\n")
    _git(repo, "commit", "-q", "-am", "joblib")
    assert lint_diff([str(repo)], "HEAD") == []
    assert [f.rule for f in lint_diff([str(repo)], "HEAD~1")] == ["lint.unsafe-load"]
