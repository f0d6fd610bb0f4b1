"""``trainguard report``: a self-contained HTML report of a guarded run.

Exit codes: 0 when the ledger did not fail verification and no finding is at or
above ``--fail-on``; 1 when the ledger fails verification (the page still renders,
with a banner) or a finding is at or above ``--fail-on``; 2 when the run directory,
the ledger or a key cannot be read, or the report cannot be written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

_EPILOG = """\
examples:
  trainguard report runs/exp1 -o exp1.html
  trainguard report runs/exp1 -o exp1.html --key ledger.key.pub --format json
  trainguard report runs/exp1 --ledger postgresql://guard@db/ledger --run 3f2a... -o r.html
"""


def register(subparsers: Any) -> None:
    """Add the ``report`` command."""
    from trainguard.cli.output import add_fail_on_severity, add_run_ledger_options

    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a guarded run",
        description="Verify the run's ledger and write one HTML file (no external resources) "
        "with the findings, a timeline, step time, loss and gradient-norm plots, replica "
        "agreement, signals and exits, checkpoint lineage and the environment snapshot.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        default=None,
        help="the HTML file to write (default: RUN_DIR/report.html)",
    )
    add_run_ledger_options(parser)
    parser.add_argument(
        "--key",
        default=None,
        metavar="PUB",
        help="public key that signs the ledger's tree heads (default: the key "
        "$TRAINGUARD_LEDGER_KEY names, if set)",
    )
    parser.add_argument(
        "--head", default=None, metavar="HEAD.json", help="a tree head kept outside the ledger"
    )
    parser.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="summary printed on stdout (default: text)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_fail_on_severity(parser, default=os.environ.get("TRAINGUARD_FAIL_ON", "high"))
    parser.set_defaults(handler=run)


def _public_key(key: str | None) -> Any:
    from trainguard.core.keys import load_public_key
    from trainguard.ledger.api import KEY_ENV

    path = key or os.environ.get(KEY_ENV)
    return load_public_key(Path(path)) if path else None


def _write(path: Path, text: str) -> None:
    """Write atomically so a viewer never opens half a report."""
    from trainguard.core.errors import UsageError

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"{path}: cannot write the report: {exc.strerror}") from exc


def run(args: argparse.Namespace) -> int:
    """Verify, render, write; exit 1 on a failed ledger or findings at ``--fail-on``."""
    from trainguard.cli.console import err_console, make_progress, safe_text
    from trainguard.cli.output import dump_json, write_result
    from trainguard.core.errors import InputError
    from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK
    from trainguard.core.findings import Severity
    from trainguard.ledger import SignedTreeHead
    from trainguard.report import build_report, default_ledger_url

    run_dir = Path(args.run_dir)
    if args.ledger:
        if not run_dir.is_dir():
            raise InputError(f"{run_dir}: no such run directory")
        url = args.ledger
    else:
        url = default_ledger_url(run_dir)
    output = Path(args.output) if args.output else run_dir / "report.html"
    if not output.parent.is_dir():
        raise InputError(f"{output}: directory {output.parent} does not exist")
    public = _public_key(args.key)
    head = SignedTreeHead.from_path(Path(args.head)) if args.head else None
    report = build_report(
        url,
        run_id=args.run,
        public_key=public,
        head=head,
        progress=make_progress(args.no_progress),
    )
    _write(output, report.html)
    counts = report.counts()
    failing = report.failing(Severity(args.fail_on))
    if args.format == "json":
        body = {
            "report": str(output),
            "bytes": len(report.html.encode("utf-8")),
            "ledger": {
                "url": report.data.ledger_url,
                "status": report.integrity.status,
                "entries": report.integrity.size,
                "heads_checked": report.integrity.heads_checked,
                "problems": [f.to_dict() for f in report.integrity.findings],
            },
            "runs": report.data.runs,
            "events": report.data.events,
            "findings": counts,
            "telemetry": {
                "step_series": len(report.data.step_seconds),
                "loss_series": len(report.data.loss),
                "grad_norm_series": len(report.data.grad_norm),
                "replica_checks": len(report.data.replica),
                "checkpoint_events": len(report.data.checkpoints),
                "process_events": len(report.data.process),
                "environment": report.data.env is not None,
            },
        }
        write_result(dump_json(body), None)
    else:
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no findings"
        write_result(
            f"{output}: {report.data.events} events, {summary}; ledger {report.integrity.status}",
            None,
        )
    console = err_console()
    if report.integrity.failed:
        console.print(
            f"[bold red]ledger failed verification[/]: {safe_text(report.integrity.summary)}"
        )
        return EXIT_FINDINGS
    if report.integrity.status != "verified":
        console.print(
            f"[yellow]ledger {report.integrity.status}[/]: {safe_text(report.integrity.summary)}"
        )
    return EXIT_FINDINGS if failing else EXIT_OK
