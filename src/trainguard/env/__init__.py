"""Environment and code integrity: what Python and what code a training run used.

- :func:`verify_environment`: installed files against RECORD, bytecode against its
  verified source, injected modules (``env.modified_file``).
- :func:`check_startup`: ``.pth`` import lines, sitecustomize, interpreter and
  loader variables, writable sys.path directories (``env.startup_injection``).
- :func:`snapshot_environment` / :func:`diff_snapshots`: a (signed) record of the
  environment kept outside it, and what changed since.
- :func:`git_state`: the training repository's commit and dirty files.

Nothing here imports or executes code from the environment under scan; source
files are compiled (not run) to check their bytecode.
"""

from __future__ import annotations

from trainguard.env.gittree import GitFile, GitState, git_state
from trainguard.env.interpreter import Interpreter, current_interpreter, query_interpreter
from trainguard.env.snapshot import (
    SNAPSHOT_FORMAT,
    SnapshotDiff,
    diff_snapshots,
    load_snapshot,
    sign_snapshot,
    snapshot_environment,
    verify_snapshot,
)
from trainguard.env.startup import check_startup
from trainguard.env.verify import VerifyReport, verify_environment

__all__ = [
    "SNAPSHOT_FORMAT",
    "GitFile",
    "GitState",
    "Interpreter",
    "SnapshotDiff",
    "VerifyReport",
    "check_startup",
    "current_interpreter",
    "diff_snapshots",
    "git_state",
    "load_snapshot",
    "query_interpreter",
    "sign_snapshot",
    "snapshot_environment",
    "verify_environment",
    "verify_snapshot",
]
