"""``trainguard lint``: static rules over training code (and over what a change introduced)."""

from __future__ import annotations

import argparse
from typing import Any

_EPILOG = """\
examples:
  trainguard lint train.py recipes/
  trainguard lint --format sarif -o lint.sarif src/
  trainguard lint --diff origin/main .          # only what this change introduced
  trainguard lint --fail-on high --rule lint.conditional-sleep --rule lint.process-kill .
  trainguard lint --list-rules

exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 usage error
(missing path, unknown revision). A file that does not parse is a lint.parse-error
finding (high), never skipped.
"""


def register(subparsers: Any) -> None:
    """Add the ``lint`` command."""
    from trainguard.cli.output import add_fail_on_severity, add_format_option

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "lint",
        help="find sabotage-like code: conditional sleeps, kills, seed overrides, ...",
        description=(
            "Lint Python training code (files, or directories recursively for *.py) for "
            "the sabotage patterns of the incident: delays keyed on world size or host, "
            "process kills, seed overrides, monkeypatching, gradient edits, unsafe loads, "
            "writes outside the run directory, exec of decoded data and network calls. "
            "The code is parsed, never imported or run."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or directories")
    parser.add_argument(
        "--diff",
        metavar="REV",
        default=None,
        help="report only findings introduced relative to git revision REV",
    )
    parser.add_argument(
        "--rule",
        action="append",
        dest="rules",
        metavar="ID",
        default=None,
        help="run only this rule (repeatable); see --list-rules",
    )
    parser.add_argument("--list-rules", action="store_true", help="print the rule table and exit")
    add_format_option(parser)
    add_fail_on_severity(parser, default="medium")
    parser.set_defaults(handler=run)


def _summary(findings: list[Any]) -> dict[str, int]:
    counts = {"low": 0, "medium": 0, "high": 0, "critical": 0}
    for finding in findings:
        counts[finding.severity.value] += 1
    return counts


def _plain(value: object) -> str:
    """Linted code is untrusted: no terminal escapes reach the user's terminal."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(value))


def _render_text(findings: list[Any]) -> str:
    lines = []
    for finding in findings:
        lines.append(
            f"{finding.location}: {finding.severity.value.upper()} {finding.rule}: "
            f"{_plain(finding.message)}"
        )
        code = finding.evidence.get("code")
        if code:
            lines.append(f"    {_plain(code)}")
    return "\n".join(lines) if lines else "no findings"


def _list_rules(fmt: str, output: str | None) -> int:
    from trainguard.cli.output import dump_json, write_result
    from trainguard.core.exitcodes import EXIT_OK
    from trainguard.lint import RULES

    if fmt == "json":
        rows = [
            {
                "id": rule.info.id,
                "severity": rule.info.severity,
                "catches": rule.info.catches,
                "rationale": rule.info.rationale,
                "fix": rule.info.fix,
            }
            for rule in RULES
        ]
        write_result(dump_json({"rules": rows}), output)
    else:
        text = "\n".join(f"{r.info.id:28} {r.info.severity:16} {r.info.title}" for r in RULES)
        write_result(text, output)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Lint the paths and report; exit 1 when a finding reaches ``--fail-on``."""
    from trainguard.cli.console import err_console
    from trainguard.cli.output import dump_json, render_findings, write_result
    from trainguard.core.errors import UsageError
    from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK
    from trainguard.core.findings import Severity, any_at_least
    from trainguard.lint import lint_diff, lint_paths

    if args.list_rules:
        return _list_rules(args.format, args.output)
    if not args.paths:
        raise UsageError("lint: give at least one PATH (file or directory), or --list-rules")
    if args.diff is not None:
        findings = lint_diff(args.paths, args.diff, rules=args.rules)
    else:
        findings = lint_paths(args.paths, rules=args.rules)
    summary = _summary(findings)
    command = "trainguard lint " + " ".join(args.paths)
    if args.format == "json":
        body = {
            "diff": args.diff,
            "summary": summary,
            "findings": [{"rule": f.rule, **f.to_dict()} for f in findings],
        }
        write_result(dump_json(body), args.output)
    elif args.format == "sarif":
        write_result(render_findings(findings, "sarif", command=command), args.output)
    else:
        write_result(_render_text(findings), args.output)
    counts = ", ".join(f"{count} {name}" for name, count in summary.items() if count)
    err_console().print(
        f"trainguard lint: {len(findings)} finding(s){' (' + counts + ')' if counts else ''}",
        markup=False,
    )
    return EXIT_FINDINGS if any_at_least(findings, Severity(args.fail_on)) else EXIT_OK
