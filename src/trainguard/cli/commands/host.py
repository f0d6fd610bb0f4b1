"""``trainguard host``: baseline and check of login and persistence points."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trainguard.cli.output import add_fail_on_severity, add_format_option, dump_json, write_result
from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK

_EPILOG = """examples:
  sudo trainguard host baseline --out /secure/host.base.json --key team.key
  sudo trainguard host check --baseline /secure/host.base.json --key team.key.pub
  trainguard host check --baseline image.base.json --root /mnt/image --format sarif
  trainguard host baseline --out b.json --setuid-path /usr/bin /opt/tools/bin

Watched: /etc/passwd accounts (new uid 0), authorized_keys of every user,
sshd_config (+Include), cron, at, systemd units/timers/drop-ins (system and user),
shell start-up files, /etc/profile.d, /etc/environment, /etc/ld.so.preload,
sudoers(.d), PAM configuration and modules, setuid/setgid files. Run as root:
what cannot be read is reported, never passed. Exit codes: 0 clean, 1 findings at
or above --fail-on, 2 usage or input error.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``host`` and its subcommands."""
    parser = subparsers.add_parser(
        "host",
        help="baseline and check login and persistence points",
        description="Record SSH keys, cron, systemd, PAM, sudoers, preload and setuid files "
        "into a (signed) baseline; report what was added, changed or removed since.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="host commands", metavar="SUBCOMMAND")
    parser.set_defaults(handler=_usage)

    baseline = sub.add_parser(
        "baseline",
        help="record the current state",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    baseline.add_argument("--out", required=True, metavar="BASE.json", help="file to write")
    _add_common(baseline)
    baseline.add_argument("--key", metavar="KEY", help="Ed25519 private key to sign with")
    baseline.set_defaults(handler=_run_baseline)

    check = sub.add_parser(
        "check",
        help="compare the current state with a baseline",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--baseline", required=True, metavar="BASE.json", help="baseline file")
    _add_common(check)
    check.add_argument("--key", metavar="PUB", help="require a baseline signed by this key")
    add_format_option(check)
    add_fail_on_severity(check)
    check.set_defaults(handler=_run_check)


def _usage(_args: argparse.Namespace) -> int:
    from trainguard.core.errors import UsageError

    raise UsageError("host: give a subcommand: baseline or check")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=None,
        help="read the host below DIR (a mounted image); default / (check: the baseline's)",
    )
    parser.add_argument(
        "--setuid-path",
        nargs="+",
        action="extend",
        default=None,
        metavar="P",
        help="directories (inside the root) searched for setuid/setgid files",
    )


def _root(value: str | None) -> Path | None:
    if value is None:
        return None
    root = Path(value)
    if not root.is_dir():
        from trainguard.core.errors import UsageError

        raise UsageError(f"--root {value}: not a directory; give the mounted image's top")
    return root


def _run_baseline(args: argparse.Namespace) -> int:
    from trainguard.cli.console import err_console
    from trainguard.core.keys import load_signing_key
    from trainguard.host.baseline import build_baseline, sign_baseline

    key = load_signing_key(Path(args.key)) if args.key else None
    root = _root(args.root) or Path("/")
    baseline: dict[str, Any] = build_baseline(root, args.setuid_path)
    if key is not None:
        baseline = sign_baseline(baseline, key)
    write_result(dump_json(baseline), args.out)
    entries = baseline["entries"]
    errors = [e for e in entries.values() if e.get("kind") == "error"]
    err_console().print(
        f"wrote {args.out}: {len(entries)} entries under {root}"
        + (f", signed by {key.key_id[:16]}" if key else ", unsigned")
    )
    if errors:
        err_console().print(
            f"{len(errors)} locations could not be read (run as root); `host check` will "
            "report them"
        )
        return EXIT_FINDINGS
    return EXIT_OK


def _run_check(args: argparse.Namespace) -> int:
    from trainguard.cli.console import safe_text
    from trainguard.cli.output import render_findings
    from trainguard.core.findings import Severity, any_at_least
    from trainguard.core.keys import load_public_key
    from trainguard.host import check_host, load_baseline

    public = load_public_key(Path(args.key)) if args.key else None
    baseline = load_baseline(Path(args.baseline), public)
    root = _root(args.root)
    findings = check_host(
        baseline, root, tuple(args.setuid_path) if args.setuid_path is not None else None
    )
    if args.format == "text":
        lines = [f"{f.severity.value.upper():8} {f.rule}: {safe_text(f.message)}" for f in findings]
        signed = (
            f"signed by {baseline.signed_by[:16]}"
            if baseline.signed_by
            else "signature not checked"
        )
        lines.append(
            f"{len(findings)} findings against {safe_text(args.baseline)} ({signed}, "
            f"{len(baseline.entries)} baseline entries)"
        )
        write_result("\n".join(lines), args.output)
    else:
        extra = {
            "baseline": str(args.baseline),
            "signed_by": baseline.signed_by,
            "root": str(root or baseline.root),
        }
        write_result(
            render_findings(findings, args.format, command="trainguard host check", extra=extra),
            args.output,
        )
    return EXIT_FINDINGS if any_at_least(findings, Severity(args.fail_on)) else EXIT_OK
