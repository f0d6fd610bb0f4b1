"""``lint --diff REV``: report only what a change introduced relative to a git revision.

A review bot should not repeat every finding of a legacy repository on every
change, but it must not let a change slip through either. A finding counts as
*introduced* when its (rule, severity, normalised code) key occurs more often in
the changed files now than in their versions at ``REV`` (all changed files
pooled, so code moved between files is not new). Among equal keys, findings on
added lines are reported first. Matching by key rather than by line number means
that adding ``if ws > 256:`` above an old ``time.sleep(backoff)`` is reported
(the sleep's severity and key change), and so is a change far away that makes an
old line dangerous (``ws = 1`` becoming ``ws = dist.get_world_size()``).

Git is run with external diff drivers, text conversion and fsmonitor disabled:
the repository's own configuration is under the insider's control and must not
run anything.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from trainguard.core.errors import LintError
from trainguard.core.findings import Finding
from trainguard.lint.engine import PARSE_ERROR, Rule, lint_text, read_source

_logger = logging.getLogger(__name__)
_GIT_TIMEOUT_S = 120
_HUNK = re.compile(rb"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")
_SAFE_GIT = (
    "git",
    "--no-pager",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.quotepath=off",
    "-c",
    "diff.external=",
)


@dataclass(frozen=True, slots=True)
class ChangedFile:
    """One file that differs from the revision."""

    display: str
    """Path shown in findings."""
    added: frozenset[int]
    """Line numbers (new file) that were added or changed."""
    old: bytes | None
    """Content at the revision; None when the file is new."""


def _git(root: Path, *args: str) -> bytes:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
    try:
        completed = subprocess.run(
            [*_SAFE_GIT, "-C", str(root), *args],
            capture_output=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
            env=env,
        )
    except FileNotFoundError as exc:
        raise LintError("git is not installed; --diff needs git on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise LintError(f"git {args[0]} in {root} took over {_GIT_TIMEOUT_S}s") from exc
    if completed.returncode != 0:
        detail = completed.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit {completed.returncode}"
        raise LintError(f"git {args[0]} failed in {root}: {reason}")
    return completed.stdout


def _repo_root(path: Path) -> Path:
    start = path if path.is_dir() else path.parent
    try:
        out = _git(start, "rev-parse", "--show-toplevel")
    except LintError as exc:
        raise LintError(
            f"{path}: not inside a git repository; --diff needs one (run without --diff)"
        ) from exc
    return Path(out.decode("utf-8", "surrogateescape").strip())


def _added_lines(diff: bytes) -> frozenset[int]:
    lines: set[int] = set()
    for raw in diff.splitlines():
        match = _HUNK.match(raw)
        if match is None:
            continue
        start = int(match.group(1))
        count = 1 if match.group(2) is None else int(match.group(2))
        lines.update(range(start, start + count))
    return frozenset(lines)


def _split_z(data: bytes) -> list[str]:
    return [item.decode("utf-8", "surrogateescape") for item in data.split(b"\0") if item]


def changed_files(paths: Sequence[str], rev: str) -> list[ChangedFile]:
    """Files under ``paths`` that differ from ``rev`` (working tree, untracked included).

    Raises:
        LintError: a path is missing or not in a git repository, or ``rev`` is unknown.
    """
    by_root: dict[Path, list[tuple[str, bool]]] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise LintError(f"{raw}: no such file or directory; pass existing files or folders")
        root = _repo_root(path.resolve())
        relative = os.path.relpath(path.resolve(), root)
        by_root.setdefault(root, []).append((relative, path.is_file()))
    result: list[ChangedFile] = []
    show_absolute = any(Path(raw).is_absolute() for raw in paths)
    for root, specs in by_root.items():
        try:
            _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except LintError as exc:
            raise LintError(
                f"{rev}: not a commit in {root}; pass a branch, tag or commit to --diff"
            ) from exc
        pathspecs = [spec for spec, _ in specs]
        explicit = {spec for spec, is_file in specs if is_file}
        names = _split_z(
            _git(root, "diff", "--name-only", "-z", "--no-renames", rev, "--", *pathspecs)
        )
        untracked = set(
            _split_z(
                _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--", *pathspecs)
            )
        )
        for name in sorted(set(names) | untracked):
            if not (name.endswith(".py") or name in explicit):
                continue
            absolute = root / name
            if not absolute.exists():
                continue  # deleted: nothing left to introduce anything
            display = str(absolute) if show_absolute else os.path.relpath(absolute)
            if name in untracked:
                result.append(ChangedFile(display, frozenset(), None))
                continue
            diff = _git(
                root,
                "diff",
                "-U0",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--no-renames",
                rev,
                "--",
                name,
            )
            try:
                old: bytes | None = _git(root, "show", f"{rev}:{name}")
            except LintError:
                old = None  # added since rev
            result.append(ChangedFile(display, _added_lines(diff), old))
    return result


def _key(finding: Finding) -> tuple[str, str, str]:
    code = str(finding.evidence.get("code", ""))
    if finding.rule == PARSE_ERROR:
        code = finding.message
    return (finding.rule, finding.severity.value, code)


def _on_added_line(finding: Finding, added: frozenset[int] | None) -> bool:
    if added is None:
        return True
    lines: Iterable[int] = finding.evidence.get("lines") or [finding.evidence.get("line", 0)]
    return any(int(line) in added for line in lines)


def lint_changes(changes: Sequence[ChangedFile], rules: Sequence[Rule]) -> list[Finding]:
    """Findings introduced by ``changes`` (see the module docstring for the matching)."""
    old_counts: Counter[tuple[str, str, str]] = Counter()
    new: list[tuple[Finding, frozenset[int] | None]] = []
    for change in changes:
        if change.old is not None:
            old_findings, _ = lint_text(change.old, change.display, rules)
            old_counts.update(_key(f) for f in old_findings)
        data = read_source(change.display)
        if isinstance(data, Finding):
            new.append((data, None))
            continue
        new_findings, _ = lint_text(data, change.display, rules)
        added = None if change.old is None else change.added
        new.extend((finding, added) for finding in new_findings)
    # Prefer findings on added lines when only some of several equal keys are new.
    new.sort(key=lambda item: not _on_added_line(item[0], item[1]))
    introduced: list[Finding] = []
    for finding, _ in new:
        key = _key(finding)
        if old_counts[key] > 0:
            old_counts[key] -= 1
            continue
        introduced.append(finding)
    introduced.sort(key=lambda f: (f.path or "", int(f.evidence.get("line", 0)), f.rule))
    _logger.debug("%d changed files, %d introduced findings", len(changes), len(introduced))
    return introduced


def lint_diff(paths: Sequence[str], rev: str, rules: Sequence[Rule]) -> list[Finding]:
    """Lint only what changed under ``paths`` since ``rev`` and report what is new."""
    return lint_changes(changed_files(paths, rev), rules)


__all__ = ["ChangedFile", "changed_files", "lint_changes", "lint_diff"]
