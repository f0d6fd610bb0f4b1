"""``trainguard findings``: the findings of a guarded run, read from its ledger.

Exit codes: 0 when no finding is at or above ``--fail-on``; 1 when one is; 2 when
the run directory or its ledger cannot be read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

_EPILOG = """\
examples:
  trainguard findings runs/exp1
  trainguard findings runs/exp1 --format json --fail-on critical
  trainguard findings runs/exp1 --format sarif > guard.sarif
  trainguard findings runs/exp1 --ledger postgresql://guard@db/ledger --run 3f2a...
  trainguard findings runs/exp1 --kind process.killed --kind rank.hang
"""


def register(subparsers: Any) -> None:
    """Add the ``findings`` command."""
    from trainguard.cli.output import (
        add_fail_on_severity,
        add_format_option,
        add_run_ledger_options,
    )

    parser = subparsers.add_parser(
        "findings",
        help="list the findings of a guarded run",
        description="Read the findings every rank and the supervisor recorded in the run's "
        "ledger (sqlite in the run directory by default).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    add_run_ledger_options(parser)
    parser.add_argument(
        "--kind", action="append", default=None, metavar="KIND", help="only these kinds"
    )
    add_format_option(parser)
    add_fail_on_severity(parser, default=os.environ.get("TRAINGUARD_FAIL_ON", "high"))
    parser.set_defaults(handler=run)


def collect(
    run_dir: Path, ledger_url: str | None, run_id: str | None, kinds: list[str] | None
) -> list[dict[str, Any]]:
    """Finding events of the run: ``{"finding": Finding, "seq", "run", "writer_rank", ...}``.

    Raises:
        InputError: the run directory does not exist.
        LedgerError: the ledger cannot be opened or read.
    """
    from trainguard.core.errors import InputError, LedgerError
    from trainguard.core.findings import Finding
    from trainguard.guard.checks.ledger_view import event_fields
    from trainguard.guard.supervisor import default_ledger, open_run_ledger

    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    url = ledger_url or default_ledger(run_dir)
    if ledger_url is None and not (run_dir / "ledger.sqlite").exists():
        raise InputError(
            f"{run_dir}: no ledger.sqlite in this run directory; pass --ledger URL "
            "if the run used another ledger"
        )
    ledger = open_run_ledger(url)
    try:
        events = [event_fields(e) for e in ledger.events(kind="finding")]
    except LedgerError:
        raise
    except Exception as exc:  # a foreign error while reading -> one line, exit 2
        raise LedgerError(f"cannot read findings from {url}: {exc}") from exc
    finally:
        close = getattr(ledger, "close", None)
        if callable(close):
            close()
    out = []
    for event in events:
        if run_id is not None and event.get("run") != run_id:
            continue
        try:
            finding = Finding.from_dict(event["payload"])
        except (KeyError, ValueError, TypeError) as exc:
            raise LedgerError(
                f"{url}: finding event {event.get('seq')} is malformed ({exc})"
            ) from exc
        if kinds and finding.rule not in kinds:
            continue
        out.append({**event, "finding": finding})
    return out


def run(args: argparse.Namespace) -> int:
    """List the findings; exit 1 when one is at or above ``--fail-on``."""
    from trainguard.cli.console import safe_text
    from trainguard.cli.output import dump_json, render_findings, write_result
    from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK
    from trainguard.core.findings import Severity

    rows = collect(Path(args.run_dir), args.ledger, args.run, args.kind)
    findings = [row["finding"] for row in rows]
    threshold = Severity(args.fail_on)
    failing = any(f.severity.at_least(threshold) for f in findings)
    counts = {s.value: sum(1 for f in findings if f.severity is s) for s in Severity}
    if args.format == "json":
        body = {
            "run_dir": str(args.run_dir),
            "findings": [
                {
                    **row["finding"].to_dict(),
                    "ledger": {
                        "seq": row.get("seq"),
                        "run": row.get("run"),
                        "writer_rank": row.get("rank"),
                    },
                }
                for row in rows
            ],
            "summary": counts,
        }
        write_result(dump_json(body), args.output)
    elif args.format == "sarif":
        write_result(render_findings(findings, "sarif", command="trainguard findings"), args.output)
    else:
        lines = []
        for f in findings:
            where = f" at {f.location}" if f.location else ""
            rank = "-" if f.rank is None else str(f.rank)
            lines.append(
                f"{f.severity.value.upper():8} {f.rule:20} rank {rank:>3} step "
                f"{'-' if f.step is None else f.step}{where}: {safe_text(f.message)}"
            )
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
        lines.append(f"{len(findings)} finding(s): {summary}")
        write_result("\n".join(lines), args.output)
    return EXIT_FINDINGS if failing else EXIT_OK
