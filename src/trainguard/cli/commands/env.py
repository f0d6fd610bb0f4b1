"""``trainguard env``: verify, snapshot and diff a Python environment; record git state."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.cli.output import add_fail_on_severity, add_format_option, dump_json, write_result
from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK

if TYPE_CHECKING:
    from trainguard.core.findings import Finding
    from trainguard.env.interpreter import Interpreter

_EPILOG = """examples:
  trainguard env verify                          # every distribution + start-up checks
  trainguard env verify --dist torch --format json
  trainguard env verify --python /opt/venvs/train/bin/python --jobs 8
  trainguard env startup
  trainguard env snapshot --out env.lock.json --key team.key
  trainguard env diff env.lock.json live --key team.key.pub
  trainguard env diff old.lock.json new.lock.json
  trainguard env git ~/src/train-repo --format json

exit codes: 0 clean, 1 findings at or above --fail-on (or differences for diff),
2 usage or input error.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``env`` and its subcommands."""
    parser = subparsers.add_parser(
        "env",
        help="verify the Python environment and record code state",
        description="Verify installed files against RECORD, find start-up injection, "
        "snapshot and diff environments, record a repository's git state.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="env commands", metavar="SUBCOMMAND")
    parser.set_defaults(handler=_usage(parser))

    verify = sub.add_parser(
        "verify",
        help="check installed files against their RECORD hashes",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_python(verify)
    verify.add_argument(
        "--dist",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="only these distributions (repeatable)",
    )
    verify.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    verify.add_argument(
        "--no-bytecode", action="store_true", help="skip comparing .pyc files with their source"
    )
    verify.add_argument(
        "--no-startup", action="store_true", help="skip the start-up injection checks"
    )
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_format_option(verify)
    add_fail_on_severity(verify)
    verify.set_defaults(handler=_run_verify)

    startup = sub.add_parser(
        "startup",
        help="find .pth, sitecustomize, env-variable and preload injection",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_python(startup)
    add_format_option(startup)
    add_fail_on_severity(startup)
    startup.set_defaults(handler=_run_startup)

    snapshot = sub.add_parser(
        "snapshot",
        help="record distributions, versions and file digests (optionally signed)",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_python(snapshot)
    snapshot.add_argument("--out", required=True, metavar="LOCK.json", help="file to write")
    snapshot.add_argument("--key", metavar="KEY", help="Ed25519 private key to sign with")
    snapshot.add_argument(
        "--dist", nargs="+", action="extend", default=[], metavar="NAME", help="only these"
    )
    snapshot.add_argument("--jobs", type=int, default=None, help="worker processes")
    snapshot.add_argument(
        "--versions-only", action="store_true", help="record versions, not file digests"
    )
    snapshot.add_argument("--no-progress", action="store_true", help="no progress bar")
    snapshot.set_defaults(handler=_run_snapshot)

    diff = sub.add_parser(
        "diff",
        help="compare a snapshot with another or with the live environment",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    diff.add_argument("old", metavar="LOCK.json", help="the reference snapshot")
    diff.add_argument(
        "new", nargs="?", default="live", metavar="LOCK2.json|live", help="default: live"
    )
    diff.add_argument("--key", metavar="PUB", help="require snapshots signed by this key")
    _add_python(diff)
    diff.add_argument("--jobs", type=int, default=None, help="worker processes (live)")
    diff.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_format_option(diff)
    diff.set_defaults(handler=_run_diff)

    git = sub.add_parser(
        "git",
        help="commit, dirty and untracked files (with digests) of a repository",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    git.add_argument("path", metavar="PATH", help="a directory inside the repository")
    git.add_argument(
        "--format", choices=["text", "json"], default="text", help="output format (default: text)"
    )
    git.add_argument("-o", "--output", metavar="FILE", default=None, help="write to FILE")
    git.set_defaults(handler=_run_git)


def _usage(parser: argparse.ArgumentParser) -> Any:
    def run(_args: argparse.Namespace) -> int:
        from trainguard.core.errors import UsageError

        raise UsageError("env: give a subcommand: verify, startup, snapshot, diff or git")

    return run


def _add_python(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--python",
        metavar="PATH",
        default=None,
        help="check this interpreter's environment (default: the running one)",
    )


def _interpreter(python: str | None) -> Interpreter:
    from trainguard.env.interpreter import current_interpreter, query_interpreter

    return query_interpreter(python) if python else current_interpreter()


def _sorted(findings: Sequence[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.severity.level, f.path or "", f.message))


def _text_findings(findings: Sequence[Finding]) -> list[str]:
    from trainguard.cli.console import safe_text

    # safe_text strips control characters; markup escaping is harmless on plain stdout.
    return [
        f"{finding.severity.value.upper():8} {finding.rule}: {safe_text(finding.message)}"
        for finding in _sorted(findings)
    ]


def _exit(findings: Sequence[Finding], fail_on: str) -> int:
    from trainguard.core.findings import Severity, any_at_least

    return EXIT_FINDINGS if any_at_least(findings, Severity(fail_on)) else EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    from trainguard.cli.console import make_progress
    from trainguard.cli.output import render_findings
    from trainguard.env.startup import check_startup
    from trainguard.env.verify import verify_environment

    if args.jobs is not None and args.jobs < 1:
        from trainguard.core.errors import UsageError

        raise UsageError(f"--jobs {args.jobs}: give a positive number of workers")
    interp = _interpreter(args.python)
    report = verify_environment(
        interp,
        dists=args.dist or None,
        jobs=args.jobs,
        check_bytecode=not args.no_bytecode,
        progress=make_progress(args.no_progress),
    )
    findings = list(report.findings)
    if not args.no_startup:
        findings.extend(check_startup(interp))
    if args.format == "text":
        lines = _text_findings(findings)
        s = report.summary()
        lines.append(
            f"verified {s['distributions']} distributions, {s['files']} files, {s['pycs']} "
            f"bytecode files, {s['bytes'] / 1e6:.1f} MB in {s['seconds']:.1f}s "
            f"({interp.executable}): {len(findings)} findings"
        )
        write_result("\n".join(lines), args.output)
    else:
        extra = {
            "interpreter": interp.to_dict(),
            "summary": report.summary(),
            "distributions": [d.to_dict() for d in report.distributions],
        }
        write_result(
            render_findings(
                _sorted(findings), args.format, command="trainguard env verify", extra=extra
            ),
            args.output,
        )
    return _exit(findings, args.fail_on)


def _run_startup(args: argparse.Namespace) -> int:
    from trainguard.cli.output import render_findings
    from trainguard.env.startup import check_startup

    interp = _interpreter(args.python)
    findings = check_startup(interp)
    if args.format == "text":
        lines = _text_findings(findings) or ["no start-up injection found"]
        write_result("\n".join(lines), args.output)
    else:
        write_result(
            render_findings(
                _sorted(findings),
                args.format,
                command="trainguard env startup",
                extra={"interpreter": interp.to_dict()},
            ),
            args.output,
        )
    return _exit(findings, args.fail_on)


def _run_snapshot(args: argparse.Namespace) -> int:
    from trainguard.cli.console import err_console, make_progress
    from trainguard.core.keys import load_signing_key
    from trainguard.env.snapshot import sign_snapshot, snapshot_environment

    key = load_signing_key(Path(args.key)) if args.key else None
    interp = _interpreter(args.python)
    snapshot = snapshot_environment(
        interp,
        digests=not args.versions_only,
        dists=args.dist or None,
        jobs=args.jobs,
        progress=make_progress(args.no_progress),
    )
    if key is not None:
        snapshot = sign_snapshot(snapshot, key)
    write_result(dump_json(snapshot), args.out)
    findings = snapshot.get("findings") or []
    files = sum(len(d.get("files") or {}) for d in snapshot["distributions"].values())
    err_console().print(
        f"wrote {args.out}: {len(snapshot['distributions'])} distributions, {files} file digests"
        + (f", signed by {key.key_id[:16]}" if key else ", unsigned")
    )
    if findings:
        err_console().print(
            f"{len(findings)} files did not verify against RECORD when the snapshot was taken; "
            "see 'findings' in the snapshot or run `trainguard env verify`"
        )
        return EXIT_FINDINGS
    return EXIT_OK


def _run_diff(args: argparse.Namespace) -> int:
    from trainguard.cli.console import make_progress, safe_text
    from trainguard.cli.output import render_findings
    from trainguard.core.keys import load_public_key
    from trainguard.env.snapshot import diff_snapshots, load_snapshot, snapshot_environment

    public = load_public_key(Path(args.key)) if args.key else None
    old = load_snapshot(Path(args.old), public)
    if args.new == "live":
        has_files = any("files" in d for d in old["distributions"].values())
        dists = None
        new = snapshot_environment(
            _interpreter(args.python),
            digests=has_files,
            dists=dists,
            jobs=args.jobs,
            progress=make_progress(args.no_progress),
        )
    else:
        new = load_snapshot(Path(args.new), public)
    diff = diff_snapshots(old, new)
    findings = diff.findings()
    if args.format == "text":
        lines = _text_findings(findings) or [
            f"no differences between {safe_text(args.old)} and {safe_text(args.new)}"
        ]
        write_result("\n".join(lines), args.output)
    elif args.format == "json":
        write_result(
            dump_json({"diff": diff.to_dict(), "findings": [f.to_dict() for f in findings]}),
            args.output,
        )
    else:
        write_result(
            render_findings(findings, args.format, command="trainguard env diff"), args.output
        )
    return EXIT_OK if diff.empty else EXIT_FINDINGS


def _run_git(args: argparse.Namespace) -> int:
    from trainguard.cli.console import safe_text
    from trainguard.env.gittree import git_state

    state = git_state(args.path)
    if args.format == "json":
        write_result(dump_json(state.to_dict()), args.output)
        return EXIT_OK
    lines = [
        f"repository {safe_text(state.root)}",
        f"commit     {state.commit or '(no commits)'}"
        + (f" on {safe_text(state.branch)}" if state.branch else " (detached)"),
        f"dirty      {'yes' if state.dirty else 'no'}",
    ]
    lines.extend(
        f"  {item.status:3} {safe_text(item.path)}  {item.sha256 or '-'}"
        for item in (*state.modified, *state.untracked)
    )
    write_result("\n".join(lines), args.output)
    return EXIT_OK
