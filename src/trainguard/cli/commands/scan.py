"""``trainguard scan``: static analysis of model files, by content, never executed.

Exit codes: 0 when no file reaches ``--fail-on``; 1 when one does (``error``
always fails); 2 for usage errors such as a missing path. JSON output follows
DESIGN.md's scan contract exactly; text output is a compact table of the files
that are not ``safe`` plus a summary on stderr.
"""

from __future__ import annotations

import argparse
import io
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainguard.core.findings import FileReport, Finding

_EPILOG = """\
examples:
  trainguard scan model.pt
  trainguard scan checkpoints/ --format json -o scan.json
  trainguard scan ckpt/ --fail-on malicious --jobs 4
  trainguard scan run/ --allow mypkg.models.MyConfig --format sarif > scan.sarif
  trainguard scan run/ --config trainguard-scan.toml

config file (TOML):
  [scan]
  allow = ["mypkg.models.MyConfig", "mypkg.data.Vocab"]
"""


def register(subparsers: Any) -> None:
    """Add the ``scan`` command."""
    from trainguard.cli.output import HelpFormatter, add_format_option

    parser = subparsers.add_parser(
        "scan",
        help="scan model files for code that would run when they are loaded",
        description=(
            "Scan files and directories (recursively) by content: pickles of every protocol, "
            "PyTorch zip and legacy checkpoints, numpy .npy/.npz, joblib, safetensors, DCP "
            "metadata and compressed or nested archives. Nothing is imported or executed."
        ),
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to scan")
    add_format_option(parser)
    parser.add_argument(
        "--fail-on",
        choices=["unknown", "malicious"],
        default=os.environ.get("TRAINGUARD_FAIL_ON", "unknown"),
        help="exit 1 when a file's verdict is at or above this (default: unknown; "
        "'error' always fails)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="MODULE.NAME",
        help="also accept this global (repeatable), e.g. mypkg.models.MyConfig",
    )
    parser.add_argument(
        "--config", metavar="FILE", help='TOML file with [scan] allow = ["module.name", ...]'
    )
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=os.environ.get("TRAINGUARD_JOBS", "auto"),
        metavar="N",
        help="scan N files in parallel processes; 'auto' (the default, or TRAINGUARD_JOBS) "
        "uses one per idle core when there are at least 64 files",
    )
    parser.add_argument(
        "--no-reuse",
        action="store_true",
        help="analyse every file from scratch instead of reusing the analysis of "
        "byte-identical pickles within this run (same results, slower; for comparison)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    # The scanner logs nothing on its normal path: skip importing logging at start-up.
    parser.set_defaults(handler=run, lean_startup=True)


def _jobs(text: str) -> int:
    """``--jobs`` value: a count of at least 1, or ``auto`` (0 for the library)."""
    if text.strip().lower() == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--jobs must be at least 1 (or 'auto')")
    return value


def load_allow_config(path: str) -> list[str]:
    """The ``allow`` list of a scan config file (``[scan] allow`` or top-level ``allow``)."""
    import tomllib

    from trainguard.core.errors import UsageError

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}") from exc
    section = data.get("scan", data)
    allow = section.get("allow", []) if isinstance(section, dict) else []
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise UsageError(f"{path}: 'allow' must be a list of \"module.name\" strings")
    return allow


def _validate_allow(names: list[str]) -> list[str]:
    import re

    from trainguard.core.errors import UsageError

    pattern = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")
    for name in names:
        if not pattern.match(name):
            raise UsageError(f"--allow {name!r}: expected MODULE.NAME, e.g. mypkg.models.MyConfig")
    return names


def run(args: argparse.Namespace) -> int:
    """Scan, render, and map verdicts to the exit code."""
    from trainguard.cli.console import make_progress
    from trainguard.cli.output import dump_json, write_result
    from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK
    from trainguard.core.findings import Verdict, scan_summary
    from trainguard.scan import scan_path
    from trainguard.scan.policy import Policy

    allow = list(args.allow)
    if args.config:
        allow += load_allow_config(args.config)
    policy = Policy.default(extra_allow=tuple(_validate_allow(allow)))
    many = len(args.paths) > 1 or any(os.path.isdir(p) for p in args.paths)  # noqa: PTH112
    progress = make_progress(args.no_progress or not many)
    reports = scan_path(
        args.paths, policy=policy, jobs=args.jobs, progress=progress, reuse=not args.no_reuse
    )
    fail_on = Verdict(args.fail_on)
    summary = scan_summary(reports)
    if args.format == "json":
        body = {"files": [r.to_dict() for r in reports], "summary": summary}
        write_result(dump_json(body), args.output)
    elif args.format == "sarif":
        from trainguard.core.sarif import to_sarif

        findings = [f for r in reports for f in r.findings]
        command = "trainguard scan " + " ".join(args.paths)
        write_result(dump_json(to_sarif(findings, tool_command=command)), args.output)
    else:
        text = _render_text(reports)
        if text or args.output:
            write_result(text, args.output)
    _print_summary(reports, summary)
    failed = any(r.verdict.fails(fail_on) for r in reports)
    return EXIT_FINDINGS if failed else EXIT_OK


def _render_text(reports: list[FileReport]) -> str:
    """A compact table of every file that is not safe (plain text, so it can go to a file)."""
    from rich.console import Console
    from rich.table import Table

    from trainguard.cli.console import safe_text
    from trainguard.core.findings import Verdict

    flagged = [r for r in reports if r.verdict is not Verdict.SAFE]
    if not flagged:
        return ""
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in ("verdict", "file", "format", "rule", "detail"):
        table.add_column(column, overflow="fold")
    for report in flagged:
        worst: list[Finding | None] = [
            *sorted(report.findings, key=lambda f: -f.severity.level)[:3]
        ] or [None]
        for index, finding in enumerate(worst):
            detail = ""
            rule = ""
            if finding is not None:
                rule = finding.rule
                where = f"[{finding.member}] " if finding.member else ""
                glob = f"{finding.global_name}: " if finding.global_name else ""
                detail = safe_text(f"{where}{glob}{finding.message}")
            table.add_row(
                report.verdict.value if index == 0 else "",
                safe_text(report.path) if index == 0 else "",
                report.format if index == 0 else "",
                rule,
                detail,
            )
        if len(report.findings) > 3:
            table.add_row("", "", "", "", f"... {len(report.findings) - 3} more finding(s)")
    console = Console(width=160, record=True, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.export_text()


def _print_summary(reports: list[FileReport], summary: dict[str, int]) -> None:
    """One plain line on stderr (no rich import: it costs more start-up than a small scan)."""
    import sys

    parts = ", ".join(f"{count} {verdict}" for verdict, count in summary.items() if count)
    print(f"scanned {len(reports)} file(s): {parts or 'nothing'}", file=sys.stderr, flush=True)
