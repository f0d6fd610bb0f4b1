"""Static rules over training code: sabotage patterns of the 2024 incident.

Entry points::

    from trainguard.lint import lint_paths, lint_source, lint_diff
    findings = lint_paths(["train.py", "recipes/"])

Rules (docs/lint.md has the table with rationale and fixes): conditional sleeps,
process kills, seed overrides, monkeypatching, gradient edits, unsafe loads,
writes outside the run directory, exec of decoded data and network calls. The
linted code is parsed with :mod:`ast` only, never imported or executed; a file
that cannot be parsed is a ``lint.parse-error`` finding (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from trainguard.core.findings import Finding
from trainguard.lint import diff as _diff
from trainguard.lint.engine import (
    PARSE_ERROR,
    RuleInfo,
    iter_python_files,
    lint_files,
    lint_text,
    select_rules,
)
from trainguard.lint.rules import RULE_IDS, RULES

__all__ = [
    "PARSE_ERROR",
    "RULES",
    "RULE_IDS",
    "RuleInfo",
    "lint_diff",
    "lint_paths",
    "lint_source",
]


def lint_source(
    text: str | bytes, filename: str = "<string>", *, rules: Iterable[str] | None = None
) -> list[Finding]:
    """Lint one source text as if it were the file ``filename``.

    Args:
        text: Python source (bytes honour a PEP 263 coding cookie).
        filename: Name used in findings' ``path`` and ``location``.
        rules: Rule ids to run; None runs every rule.

    Returns:
        Findings in source order; a syntax error is one ``lint.parse-error`` finding.

    Raises:
        LintError: an unknown rule id.
    """
    findings, _ = lint_text(text, filename, select_rules(RULES, rules))
    return findings


def lint_paths(paths: Sequence[str], *, rules: Iterable[str] | None = None) -> list[Finding]:
    """Lint files and directories (recursively, ``*.py``).

    Raises:
        LintError: a path does not exist, or an unknown rule id.
    """
    selected = select_rules(RULES, rules)
    return lint_files(iter_python_files(paths), selected)


def lint_diff(
    paths: Sequence[str], rev: str, *, rules: Iterable[str] | None = None
) -> list[Finding]:
    """Findings that the working tree introduced under ``paths`` relative to git ``rev``.

    Raises:
        LintError: not a git repository, unknown revision, missing path, bad rule id.
    """
    return _diff.lint_diff(paths, rev, select_rules(RULES, rules))
