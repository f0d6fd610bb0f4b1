"""git_state: commit, dirty and untracked files with digests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from trainguard.core.errors import EnvError
from trainguard.core.hashing import sha256_bytes
from trainguard.env.gittree import git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_clean_then_dirty(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("lr = 0.1\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "init")
    state = git_state(repo)
    assert state.commit and len(state.commit) == 40
    assert state.branch == "main"
    assert not state.dirty
    (repo / "train.py").write_text("lr = 10.0\n")
    (repo / "sneaky.py").write_text("import os\n")
    # A hostile repo config that would run a program on `git status`.
    marker = tmp_path / "MARKER"
    _git(repo, "config", "core.fsmonitor", f"touch {marker}; false")
    state = git_state(repo / "train.py")
    assert state.dirty
    assert [(f.path, f.sha256) for f in state.modified] == [
        ("train.py", sha256_bytes(b"lr = 10.0\n"))
    ]
    assert [f.path for f in state.untracked] == ["sneaky.py"]
    assert not marker.exists()


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(EnvError, match="not a git repository"):
        git_state(tmp_path)
    with pytest.raises(EnvError, match="no such directory"):
        git_state(tmp_path / "missing")
