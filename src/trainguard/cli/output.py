"""Output formats and where results go: stdout carries results, stderr everything else."""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from trainguard.core.errors import UsageError
from trainguard.core.findings import Finding, Severity
from trainguard.core.sarif import to_sarif


class OutputFormat(enum.StrEnum):
    """``--format`` choices."""

    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's raw-description formatter, sized without :mod:`shutil`.

    argparse builds a formatter for every ``add_argument`` and imports :mod:`shutil`
    (with bz2 and lzma) to ask the terminal's width; this asks :func:`os.get_terminal_size`
    directly, like shutil does (``COLUMNS`` first, 80 without a terminal).
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def add_format_option(
    parser: argparse.ArgumentParser, *, sarif: bool = True, default: str = "text"
) -> None:
    """Add ``--format`` (and ``-o/--output``) to a command parser."""
    choices = [f.value for f in OutputFormat if sarif or f is not OutputFormat.SARIF]
    parser.add_argument(
        "--format",
        choices=choices,
        default=default,
        help=f"output format (default: {default})",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default=None,
        help="write the result to FILE instead of stdout",
    )


def add_fail_on_severity(parser: argparse.ArgumentParser, default: str = "medium") -> None:
    """``--fail-on SEVERITY`` for commands whose findings carry severities."""
    parser.add_argument(
        "--fail-on",
        choices=[s.value for s in Severity],
        default=default,
        help=f"exit 1 when a finding is at or above this severity (default: {default})",
    )


def write_result(text: str, output: str | None) -> None:
    """Write the command's result to ``--output`` or stdout."""
    if output:
        try:
            with open(output, "w", encoding="utf-8") as handle:
                handle.write(text)
                if not text.endswith("\n"):
                    handle.write("\n")
        except OSError as exc:
            raise UsageError(f"{output}: cannot write output: {exc.strerror}") from exc
        return
    sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()


def dump_json(value: Any) -> str:
    """Pretty JSON for humans and machines alike."""
    return json.dumps(value, indent=2, sort_keys=False, default=str)


def render_findings(
    findings: Iterable[Finding], fmt: str, *, command: str, extra: dict[str, Any] | None = None
) -> str:
    """Findings as JSON (``{"findings": [...]}`` plus ``extra``) or SARIF; text is per-command."""
    items = list(findings)
    if fmt == OutputFormat.SARIF:
        return dump_json(to_sarif(items, tool_command=command))
    if fmt == OutputFormat.JSON:
        body: dict[str, Any] = dict(extra or {})
        body["findings"] = [f.to_dict() for f in items]
        return dump_json(body)
    raise_usage(f"format {fmt!r} is not rendered here")


def raise_usage(message: str) -> NoReturn:
    """Abort the command with a usage error (exit 2)."""
    raise UsageError(message)


def add_run_ledger_options(parser: argparse.ArgumentParser) -> None:
    """``--ledger URL`` and ``--run RUN_ID``, for commands that read a run's ledger."""
    parser.add_argument(
        "--ledger",
        default=os.environ.get("TRAINGUARD_LEDGER"),
        metavar="URL",
        help="ledger URL (default: sqlite:///RUN_DIR/ledger.sqlite; env TRAINGUARD_LEDGER)",
    )
    parser.add_argument("--run", default=None, metavar="RUN_ID", help="only this run id")
