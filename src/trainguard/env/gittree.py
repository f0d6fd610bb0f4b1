"""The state of the training repository: commit, modified and untracked files.

Experiment trackers record the commit hash but not a dirty tree, which is exactly
where an edited training script hides. :func:`git_state` records the commit and the
digest of every modified, staged and untracked file, so a run's ledger says what
code actually ran.

The repository is attacker-writable, and its ``.git/config`` can make ``git
status`` run programs (``core.fsmonitor``). We therefore override the config keys
that execute or write (``-c core.fsmonitor=false``, ``GIT_OPTIONAL_LOCKS=0``) and
run ``git`` with argv lists and a timeout, never through a shell.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trainguard.core.errors import EnvError
from trainguard.core.hashing import sha256_file

_logger = logging.getLogger(__name__)

GIT_TIMEOUT_S: Final = 120.0
"""How long one git command may run (a huge tree's status included)."""

_SAFE_CONFIG: Final = (
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.untrackedCache=false",
    "-c",
    "status.submoduleSummary=false",
    "-c",
    "diff.external=",
)


@dataclass(frozen=True, slots=True)
class GitFile:
    """One file that differs from the commit."""

    path: str
    """Path relative to the repository root."""
    status: str
    """Porcelain XY status (``M``, ``A``, `` D``, ``??`` for untracked...)."""
    sha256: str | None
    """Digest of the working-tree content; None when deleted or not a regular file."""
    size: int | None
    """Size in bytes of the working-tree content."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"path": self.path, "status": self.status, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True, slots=True)
class GitState:
    """What code a run used."""

    root: str
    """Repository top-level directory."""
    commit: str | None
    """HEAD commit id; None in a repository without commits."""
    branch: str | None
    """Current branch; None when detached."""
    modified: tuple[GitFile, ...]
    """Tracked files changed in the index or working tree."""
    untracked: tuple[GitFile, ...]
    """Files git does not track (ignored files excluded)."""

    @property
    def dirty(self) -> bool:
        """True when the tree is not exactly the commit."""
        return bool(self.modified or self.untracked)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (recorded in the ledger at run start)."""
        return {
            "root": self.root,
            "commit": self.commit,
            "branch": self.branch,
            "dirty": self.dirty,
            "modified": [f.to_dict() for f in self.modified],
            "untracked": [f.to_dict() for f in self.untracked],
        }


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env["GIT_OPTIONAL_LOCKS"] = "0"
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.pop("GIT_DIR", None)
    env.pop("GIT_WORK_TREE", None)
    try:
        return subprocess.run(
            ["git", *_SAFE_CONFIG, "-C", str(root), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
            env=env,
        )
    except FileNotFoundError as exc:
        raise EnvError(
            "git is not installed or not on PATH; install git to record code state"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvError(f"{root}: git {args[0]} took longer than {GIT_TIMEOUT_S:.0f}s") from exc


def _digest(root: Path, rel: str) -> tuple[str | None, int | None]:
    path = root / rel
    try:
        if path.is_symlink() or not path.is_file():
            return None, None
        return sha256_file(path), path.stat().st_size
    except OSError:
        return None, None


def git_state(path: str | Path) -> GitState:
    """Commit, branch, modified and untracked files of the repository holding ``path``.

    Raises:
        EnvError: ``path`` is not inside a git working tree, or git fails.
    """
    start = Path(path)
    if not start.exists():
        raise EnvError(f"{start}: no such directory; give the training repository's path")
    where = start if start.is_dir() else start.parent
    top = _git(where, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise EnvError(f"{start}: not a git repository; run `git init` or give the repo's path")
    root = Path(top.stdout.decode("utf-8", "surrogateescape").strip())
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    commit = (
        head.stdout.decode("ascii", "replace").strip() or None if head.returncode == 0 else None
    )
    branch_proc = _git(root, "symbolic-ref", "-q", "--short", "HEAD")
    branch = (
        branch_proc.stdout.decode("utf-8", "replace").strip() or None
        if branch_proc.returncode == 0
        else None
    )
    status = _git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=no")
    if status.returncode != 0:
        message = status.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise EnvError(f"{root}: git status failed: {message[0] if message else 'no output'}")
    modified: list[GitFile] = []
    untracked: list[GitFile] = []
    fields = status.stdout.split(b"\x00")
    i = 0
    while i < len(fields):
        item = fields[i]
        i += 1
        if len(item) < 4:
            continue
        code = item[:2].decode("ascii", "replace")
        rel = item[3:].decode("utf-8", "surrogateescape")
        if code[0] in "RC":
            i += 1  # the next field is the rename/copy source
        digest, size = _digest(root, rel)
        entry = GitFile(rel, code.strip() or code, digest, size)
        (untracked if code == "??" else modified).append(entry)
    return GitState(str(root), commit, branch, tuple(modified), tuple(untracked))
