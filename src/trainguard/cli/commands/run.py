"""``trainguard run``: launch and supervise a training job (see guard/supervisor.py).

Exit codes: the job's own exit code when it failed (128 + N when it died from
signal N); otherwise 1 when the run holds a finding at or above ``--fail-on``
(default high), else 0. A missing command or an unusable ledger is 2.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

_EPILOG = """\
examples:
  trainguard run --run-dir runs/exp1 -- python train.py --epochs 3
  trainguard run --run-dir runs/exp1 -- torchrun --nproc-per-node 8 train.py
  trainguard run --run-dir runs/exp1 --hang-timeout 600 --hang-action kill -- python train.py
  trainguard run --run-dir runs/exp1 --ledger postgresql://guard@db/ledger -- torchrun ...
  trainguard findings runs/exp1          # afterwards: what was recorded

the job sees TRAINGUARD_RUN_DIR and TRAINGUARD_RUN_ID (and TRAINGUARD_LEDGER); call
trainguard.guard.hooks.install_early() first in the training script, then
trainguard.watch(model, optimizer, run_dir=os.environ["TRAINGUARD_RUN_DIR"]).
"""


def register(subparsers: Any) -> None:
    """Add the ``run`` command."""
    from trainguard.cli.output import add_fail_on_severity

    parser = subparsers.add_parser(
        "run",
        help="launch and supervise a training job",
        description="Launch COMMAND in its own session, follow its process tree, record every "
        "exit and signal, watch the ranks' heartbeats for a disabled guard or a hung rank, "
        "and forward SIGINT/SIGTERM/SIGHUP to the job.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--run-dir", required=True, metavar="DIR", help="the run directory")
    parser.add_argument(
        "--ledger",
        default=os.environ.get("TRAINGUARD_LEDGER"),
        metavar="URL",
        help="ledger URL (default: sqlite:///DIR/ledger.sqlite)",
    )
    parser.add_argument("--run-id", default=None, help="run identifier (default: random)")
    parser.add_argument(
        "--hang-timeout",
        type=float,
        default=float(os.environ.get("TRAINGUARD_HANG_TIMEOUT", "300")),
        metavar="S",
        help="seconds without a step before a rank is hung (default 300)",
    )
    parser.add_argument(
        "--stale-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds without a heartbeat from a live rank before guard.disabled (default 30)",
    )
    parser.add_argument(
        "--hang-action",
        choices=["report", "kill"],
        default="report",
        help="after reporting rank.hang: keep waiting (report) or end the job (kill)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when ending the job (default 10)",
    )
    add_fail_on_severity(parser, default="high")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Supervise the job; print a one-line summary to stderr."""
    from trainguard.cli.console import err_console, safe_text
    from trainguard.core.errors import UsageError
    from trainguard.core.findings import Severity
    from trainguard.guard.supervisor import SupervisorConfig, supervise

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("trainguard run: give the job's command after -- (see --help)")
    for name in ("hang_timeout", "stale_timeout", "grace"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0")
    result = supervise(
        SupervisorConfig(
            run_dir=Path(args.run_dir),
            command=command,
            ledger_url=args.ledger,
            run_id=args.run_id,
            hang_seconds=args.hang_timeout,
            stale_seconds=args.stale_timeout,
            hang_action=args.hang_action,
            fail_on=Severity(args.fail_on),
            grace_seconds=args.grace,
        )
    )
    console = err_console()
    worst = [f for f in result.findings if f.severity.at_least(Severity(args.fail_on))]
    console.print(
        f"trainguard run: job exited with {result.job_code}; "
        f"{len(result.findings)} finding(s), {len(worst)} at or above {args.fail_on} "
        f"(run {safe_text(result.run_id)}; see `trainguard findings {safe_text(args.run_dir)}`)",
        highlight=False,
    )
    return result.exit_code
