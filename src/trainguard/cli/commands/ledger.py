"""``trainguard ledger``: verify, show and export the append-only ledger.

Exit codes: ``verify`` 0 when every check passes (findings below ``--fail-on`` are
listed but do not fail), 1 on tampering (modified, deleted, inserted, reordered or
truncated entries, a bad head signature), 2 when the ledger or key cannot be used or
the key is not the one that signs the ledger. ``export`` verifies first and refuses
(exit 1) to sign a head over a tampered ledger.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK

_EPILOG = """examples:
  trainguard ledger verify runs/exp1/ledger.sqlite --key ledger.key.pub
  trainguard ledger verify postgresql://auditor@db:5432/ledger --key ledger.key.pub \\
      --head /safe/heads/2025-06-01.json
  trainguard ledger show runs/exp1/ledger.sqlite --kind finding
  trainguard ledger show sqlite:///runs/exp1/ledger.sqlite --run 3f2a --format json
  trainguard ledger export runs/exp1/ledger.sqlite --key ledger.key -o /safe/head.json
  trainguard ledger init-postgres postgresql://postgres@db/ledger --writer-role tg_writer
"""

_VERIFY_EPILOG = """examples:
  trainguard ledger verify runs/exp1/ledger.sqlite --key ledger.key.pub
  trainguard ledger verify URL --key ledger.key.pub --head /safe/head.json --format json

exit codes: 0 verified; 1 tampering found (named per entry); 2 unreadable ledger or wrong key
"""

# Findings that a fresh export cures: it signs a head over exactly these entries.
_CURED_BY_EXPORT = frozenset({"ledger.unsigned", "ledger.unsigned_tail"})


def register(subparsers: Any) -> None:
    """Add ``ledger`` with its ``verify``, ``show``, ``export`` and ``init-postgres``."""
    fmt = argparse.RawDescriptionHelpFormatter
    ledger = subparsers.add_parser(
        "ledger",
        help="verify, show and export the append-only event ledger",
        description="The tamper-evident ledger of guarded runs: an RFC 6962 Merkle tree over "
        "every event, with Ed25519-signed tree heads.",
        epilog=_EPILOG,
        formatter_class=fmt,
    )
    sub = ledger.add_subparsers(title="ledger commands", metavar="ACTION")
    ledger.set_defaults(handler=lambda args: _help(ledger))

    verify = sub.add_parser(
        "verify",
        help="check every entry and signed head; name what was changed",
        description="Recompute every entry's hash and the Merkle root, check every signed "
        "tree head (and one kept elsewhere, --head), and report modified, deleted, inserted, "
        "reordered and truncated entries.",
        epilog=_VERIFY_EPILOG,
        formatter_class=fmt,
    )
    verify.add_argument("url", metavar="URL", help="ledger: path, sqlite:///PATH or postgresql://")
    verify.add_argument("--key", required=True, metavar="PUB", help="public key of the signer")
    verify.add_argument(
        "--head", metavar="HEAD.json", default=None, help="a head kept outside the ledger"
    )
    verify.add_argument(
        "--format", choices=["text", "json", "sarif"], default="text", help="output format"
    )
    verify.add_argument("-o", "--output", metavar="FILE", default=None, help="write result here")
    verify.add_argument(
        "--fail-on",
        choices=["low", "medium", "high", "critical"],
        default="medium",
        help="exit 1 at or above this severity (default: medium; an uncovered tail is low)",
    )
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")
    verify.set_defaults(handler=run_verify)

    show = sub.add_parser(
        "show",
        help="list events",
        description="List the ledger's events, oldest first.",
        epilog="examples:\n  trainguard ledger show runs/exp1/ledger.sqlite --kind finding\n"
        "  trainguard ledger show URL --run 3f2a --since 1000 --format json\n",
        formatter_class=fmt,
    )
    show.add_argument("url", metavar="URL", help="ledger: path, sqlite:///PATH or postgresql://")
    show.add_argument("--kind", default=None, help="only events of this kind (e.g. finding)")
    show.add_argument("--run", default=None, help="only events of this run")
    show.add_argument("--since", type=int, default=0, help="only events after this seq")
    show.add_argument("--limit", type=int, default=0, help="at most this many events (0: all)")
    show.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    show.set_defaults(handler=run_show)

    export = sub.add_parser(
        "export",
        help="verify, then sign a tree head and write it for safekeeping",
        description="Verify the ledger, sign a head over all its entries, store it in the "
        "ledger and write it to a file. Keep that file where the people who can write the "
        "ledger cannot: it later proves truncation and rewrites (verify --head).",
        epilog="examples:\n  trainguard ledger export runs/exp1/ledger.sqlite --key ledger.key "
        "-o /safe/exp1-head.json\n",
        formatter_class=fmt,
    )
    export.add_argument("url", metavar="URL", help="ledger: path, sqlite:///PATH or postgresql://")
    export.add_argument("--key", required=True, metavar="KEY", help="private signing key")
    export.add_argument("-o", "--output", required=True, metavar="HEAD.json", help="head file")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    export.set_defaults(handler=run_export)

    init = sub.add_parser(
        "init-postgres",
        help="create the PostgreSQL schema and an INSERT-only writer role",
        description="As a database administrator: create the ledger tables, append-only "
        "triggers, and a writer role that may only SELECT and INSERT.",
        epilog="examples:\n  TG_WRITER_PASSWORD=... trainguard ledger init-postgres "
        "postgresql://postgres@db/ledger --writer-role tg_writer "
        "--password-env TG_WRITER_PASSWORD\n",
        formatter_class=fmt,
    )
    init.add_argument("admin_url", metavar="ADMIN_URL", help="postgresql:// URL of an admin")
    init.add_argument("--writer-role", required=True, help="role the training jobs log in as")
    init.add_argument("--reader-role", default=None, help="optional SELECT-only role")
    init.add_argument(
        "--password-env", default=None, metavar="VAR", help="set the writer's password from $VAR"
    )
    init.set_defaults(handler=run_init_postgres)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _plain(text: str) -> str:
    """Text from the ledger without control characters (no terminal escapes)."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def _when(t: float) -> str:
    try:
        return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return repr(t)


def run_verify(args: argparse.Namespace) -> int:
    """Verify and print the report."""
    from trainguard.cli.console import err_console, make_progress, safe_text
    from trainguard.cli.output import render_findings, write_result
    from trainguard.core.findings import Severity, any_at_least
    from trainguard.core.keys import load_public_key
    from trainguard.ledger.tree_head import SignedTreeHead
    from trainguard.ledger.verify import verify_ledger

    public = load_public_key(Path(args.key))
    head = SignedTreeHead.from_path(Path(args.head)) if args.head else None
    report = verify_ledger(args.url, public, head=head, progress=make_progress(args.no_progress))
    failed = any_at_least(report.findings, Severity(args.fail_on))
    if args.format in ("json", "sarif"):
        extra = {k: v for k, v in report.to_dict().items() if k != "findings"}
        write_result(
            render_findings(
                report.findings, args.format, command="trainguard ledger verify", extra=extra
            ),
            args.output,
        )
    else:
        lines = [
            f"{report.url}: {report.size} entries, root {report.root_hex[:16]}…, "
            f"{report.heads_checked} signed heads verified, entries 1..{report.covered} covered"
        ]
        lines += [f"  {f.severity.value:8} {f.rule}: {_plain(f.message)}" for f in report.findings]
        write_result("\n".join(lines), args.output)
    console = err_console()
    if failed:
        console.print(f"[bold red]ledger verification failed[/]: {len(report.findings)} findings")
        return EXIT_FINDINGS
    console.print(f"[green]ledger verified[/]: {safe_text(report.url)}")
    return EXIT_OK


def _event_dict(event: Any) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": event.time,
        "run": event.run,
        "rank": event.rank,
        "host": event.host,
        "pid": event.pid,
        "kind": event.kind,
        "payload": event.payload,
    }


def run_show(args: argparse.Namespace) -> int:
    """Print events as a table (text) or a JSON array (streamed)."""
    from trainguard.ledger import open_ledger

    with open_ledger(args.url, create=False, readonly=True) as ledger:
        events = ledger.events(kind=args.kind, run=args.run, since=args.since)
        if args.format == "json":
            out = sys.stdout
            out.write("[")
            for n, event in enumerate(events):
                if args.limit and n >= args.limit:
                    break
                out.write(",\n " if n else "\n ")
                out.write(json.dumps(_event_dict(event), ensure_ascii=False, sort_keys=True))
            out.write("\n]\n")
            out.flush()
            return EXIT_OK
        from rich.console import Console
        from rich.table import Table

        from trainguard.cli.console import safe_text

        table = Table(title=safe_text(ledger.url), show_lines=False)
        for column in ("seq", "time (UTC)", "run", "rank", "host", "pid", "kind", "payload"):
            table.add_column(column, overflow="fold")
        for n, event in enumerate(events):
            if args.limit and n >= args.limit:
                break
            payload = json.dumps(event.payload, ensure_ascii=False, sort_keys=True)
            if len(payload) > 160:
                payload = payload[:159] + "…"
            table.add_row(
                str(event.seq),
                _when(event.time),
                safe_text(event.run),
                "" if event.rank is None else str(event.rank),
                safe_text(event.host or ""),
                "" if event.pid is None else str(event.pid),
                safe_text(event.kind),
                safe_text(payload),
            )
        Console(highlight=False, soft_wrap=False).print(table)
    return EXIT_OK


def run_export(args: argparse.Namespace) -> int:
    """Verify, sign a head, store it and write it to ``--output``."""
    from trainguard.cli.console import err_console, make_progress, safe_text
    from trainguard.core.errors import UsageError
    from trainguard.core.keys import load_signing_key
    from trainguard.ledger import open_ledger
    from trainguard.ledger.verify import verify_ledger

    key = load_signing_key(Path(args.key))
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"{output}: directory {output.parent} does not exist")
    report = verify_ledger(args.url, key.public, progress=make_progress(args.no_progress))
    blocking = [f for f in report.findings if f.rule not in _CURED_BY_EXPORT]
    console = err_console()
    if blocking:
        for f in blocking:
            console.print(f"  {f.severity.value:8} {safe_text(f.rule)}: {safe_text(f.message)}")
        console.print(
            f"[bold red]not exporting[/]: the ledger fails verification ({len(blocking)} "
            "findings); a new head would bless the tampering"
        )
        return EXIT_FINDINGS
    with open_ledger(args.url, signing_key=key, create=False) as ledger:
        head = ledger.sign_head()
    tmp = output.with_name(output.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(head.to_json(), encoding="utf-8")
        tmp.replace(output)
    except OSError as exc:
        raise UsageError(f"{output}: cannot write the head: {exc.strerror}") from exc
    console.print(
        f"signed head over {head.size} entries (root {head.root_hex[:16]}…) written to "
        f"{safe_text(output)}; keep it where the ledger's writers cannot change it"
    )
    return EXIT_OK


def run_init_postgres(args: argparse.Namespace) -> int:
    """Create the schema and roles."""
    from trainguard.cli.console import err_console, safe_text
    from trainguard.core.errors import UsageError
    from trainguard.ledger.store.postgres import setup

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise UsageError(f"--password-env {args.password_env}: variable is not set")
    setup(
        args.admin_url,
        args.writer_role,
        writer_password=password,
        reader_role=args.reader_role,
    )
    err_console().print(
        f"ledger schema ready; role {safe_text(args.writer_role)} may only SELECT and INSERT"
    )
    return EXIT_OK
