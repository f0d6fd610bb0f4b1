"""``trainguard drill``: prove that every documented sabotage of the incident is caught.

Runs a small guarded training job once clean and once per sabotage (see
trainguard.drill and docs/drill.md) and prints the scorecard. Exit codes: 0 when
every sabotage was caught and the clean run raised no alarm of severity medium or
above; 1 when anything was missed, could not be carried out, or the clean run raised
a false alarm; 2 for bad options (an unknown ``--only`` name, a non-empty ``--keep``
directory, no torch).
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from trainguard.drill.report import DrillReport, ScenarioResult
    from trainguard.drill.scenarios import Scenario

_EPILOG = """\
examples:
  trainguard drill                               # everything: 1 to 2 minutes on 2 CPU cores
  trainguard drill --list                        # the sabotages and what must catch them
  trainguard drill --only rollback --only hung-rank
  trainguard drill --format json > drill.json
  trainguard drill --keep ./drill-runs           # keep every run directory and its ledger
  trainguard findings ./drill-runs/rollback/run  # then read one scenario's findings
"""


def register(subparsers: Any) -> None:
    """Add the ``drill`` command."""
    from trainguard.cli.output import add_format_option

    parser = subparsers.add_parser(
        "drill",
        help="inject each sabotage of the incident into a small guarded job and show it is caught",
        description="Run a small guarded training job (a two-layer transformer, 2 processes "
        "over gloo on the CPU by default) once clean, then once per documented sabotage, "
        "injected harmlessly inside that job only; print a scorecard: caught or missed, by "
        "which finding kind, how many steps and seconds after the injection.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="NAME",
        help="run only this sabotage (repeatable; names from --list); the clean run always runs",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the sabotages and the finding kinds expected"
    )
    parser.add_argument(
        "--nproc", type=int, default=2, metavar="N", help="ranks of the training job (default 2)"
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu (gloo, default) or cuda (NCCL, one GPU per rank)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        default=None,
        help="keep every scenario's directory (job, logs, run directory with its ledger) in DIR",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="deadline of one scenario in seconds; a job still running is killed (default 120)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=2,
        metavar="N",
        help="sabotage scenarios run at once (default 2; the clean run always runs alone)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    add_format_option(parser, sarif=False)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the drill (or list it); exit 1 unless everything was caught and the clean run clean."""
    from pathlib import Path

    from trainguard.cli.output import dump_json, write_result
    from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK
    from trainguard.drill import DrillOptions, run_drill
    from trainguard.drill.runner import excluded_monitors_from_env, validate

    if args.list:
        return _list(args)
    options = DrillOptions(
        only=tuple(args.only or ()),
        nproc=args.nproc,
        device=args.device,
        keep=Path(args.keep) if args.keep else None,
        timeout=args.timeout,
        parallel=args.parallel,
        exclude_monitors=excluded_monitors_from_env(),
    )
    validate(options)  # bad options fail before anything starts (exit 2)
    if options.exclude_monitors:
        _stderr().print(
            "trainguard drill: detection deliberately weakened for testing the drill "
            f"(TRAINGUARD_DRILL_EXCLUDE_MONITORS={','.join(options.exclude_monitors)})",
            markup=False,
        )
    enabled = sys.stderr.isatty() and not args.no_progress
    # The supervisor logs every finding as a warning; in a drill they are expected.
    supervisor_log = logging.getLogger("trainguard.guard.supervisor")
    level = supervisor_log.level
    if not getattr(args, "verbose", 0):
        supervisor_log.setLevel(logging.ERROR)
    try:
        with _ProgressDisplay(enabled) as display:
            report = run_drill(options, display)
    finally:
        supervisor_log.setLevel(level)
    if args.format == "json":
        write_result(dump_json(report.to_dict()), args.output)
    else:
        _write_scorecard(report, args.output)
    return EXIT_OK if report.passed else EXIT_FINDINGS


def _stderr() -> Console:
    from trainguard.cli.console import err_console

    return err_console()


def _list(args: argparse.Namespace) -> int:
    """``--list``: the sabotages, the incident move each stands for, and what must catch it."""
    from rich.table import Table

    from trainguard.cli.output import dump_json, write_result
    from trainguard.drill.scenarios import CLEAN, SABOTAGES

    if args.format == "json":
        rows = [
            {"name": s.name, "move": s.move, "how": s.how, "expected": list(s.expected)}
            for s in (CLEAN, *SABOTAGES)
        ]
        write_result(dump_json({"scenarios": rows}), args.output)
        return 0
    table = Table(title="trainguard drill: scenarios", title_justify="left")
    table.add_column("name", no_wrap=True)
    table.add_column("incident move")
    table.add_column("caught by", no_wrap=True)
    table.add_column("how the drill injects it")
    for s in (CLEAN, *SABOTAGES):
        table.add_row(s.name, s.move, "\n".join(s.expected) or "(no alarm)", s.how)
    _emit(table, "", args.output, _table_width(args.output))
    return 0


def _write_scorecard(report: DrillReport, output: str | None) -> None:
    from rich.table import Table
    from rich.text import Text

    width = _table_width(output)
    # Fixed columns take 81 cells with padding and borders; the evidence gets the rest,
    # one line per scenario (JSON has it whole). Narrower than 110: evidence below.
    wide = width >= 110
    table = Table(title="trainguard drill: scorecard", title_justify="left")
    table.add_column("sabotage", no_wrap=True, min_width=21)
    table.add_column("result", no_wrap=True, min_width=11)
    table.add_column("finding kind", no_wrap=True, min_width=18)
    table.add_column("steps", justify="right", no_wrap=True, min_width=5)
    table.add_column("seconds", justify="right", no_wrap=True, min_width=7)
    if wide:
        table.add_column("evidence", no_wrap=True, overflow="ellipsis", max_width=width - 81)
    results = (report.clean, *report.scenarios)
    for result in results:
        cells = [
            Text(result.name),
            _outcome_cell(result),
            Text(result.kind or "-"),
            Text("-" if result.steps_to_detection is None else str(result.steps_to_detection)),
            Text(
                "-" if result.seconds_to_detection is None else f"{result.seconds_to_detection:.2f}"
            ),
        ]
        if wide:
            cells.append(Text(result.evidence))
        table.add_row(*cells)
    footer = _summary(report)
    if not wide:
        evidence = "\n".join(f"{r.name}: {r.evidence}" for r in results)
        footer = f"evidence:\n{evidence}\n{footer}"
    _emit(table, footer, output, width)


def _table_width(output: str | None) -> int:
    """A terminal's own width; 160 for a pipe or a file."""
    import shutil

    if output is None and sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return 160


def _outcome_cell(result: ScenarioResult) -> Any:
    from rich.text import Text

    style = "green" if result.outcome.passed else "bold red"
    return Text(result.outcome.value, style=style)


def _summary(report: DrillReport) -> str:
    counts = report.counts()
    total = len(report.scenarios)
    verdict = "PASSED" if report.passed else "FAILED"
    parts = [f"{verdict}: {counts['caught']}/{total} sabotage(s) caught"]
    failed = [r.name for r in report.scenarios if not r.outcome.passed]
    if failed:
        parts.append(f"not caught: {', '.join(failed)}")
    parts.append(f"clean run: {report.clean.outcome.value}")
    parts.append(f"{report.nproc} ranks on {report.device}, {report.seconds:.0f} s")
    line = "; ".join(parts)
    if report.root:
        line += f"\nscenario directories kept in {report.root}"
    return line


def _emit(table: Table, footer: str, output: str | None, width: int = 160) -> None:
    """Print the table to stdout (styled on a terminal) or render it as text to a file."""
    from rich.console import Console

    from trainguard.cli.output import write_result

    if output is None:
        console = Console(highlight=False, width=width)
        console.print(table)
        if footer:
            console.print(footer, markup=False)
        return
    buffer = io.StringIO()
    Console(file=buffer, width=width, no_color=True, highlight=False).print(table)
    write_result(buffer.getvalue() + footer, output)


class _ProgressDisplay:
    """The drill's progress on stderr: the current scenario, a bar, and each verdict."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _ProgressDisplay:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=_stderr(),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("drill", total=None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def scenario_started(self, scenario: Scenario, index: int, total: int) -> None:
        """Show which scenario runs."""
        if self._progress is not None:
            self._progress.update(self._task, description=f"drill: {scenario.name}", total=total)

    def scenario_finished(self, result: ScenarioResult) -> None:
        """Print the scenario's verdict above the bar and advance it."""
        if self._progress is None:
            return
        from trainguard.cli.console import safe_text

        mark = "[green]ok[/green]" if result.outcome.passed else "[bold red]!![/bold red]"
        kind = f" ({safe_text(result.kind)})" if result.kind else ""
        self._progress.console.print(
            f"  {mark} {safe_text(result.name)}: {result.outcome.value}{kind}, "
            f"{result.seconds:.0f} s"
        )
        self._progress.advance(self._task)
