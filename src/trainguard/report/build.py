"""Read, verify and render a run's ledger: the library side of ``trainguard report``."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from trainguard.core.errors import InputError, LedgerError, TrainguardError
from trainguard.core.findings import Severity
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.ledger import SignedTreeHead, open_ledger
from trainguard.report.collect import collect
from trainguard.report.integrity import Integrity, check_ledger
from trainguard.report.model import RunData
from trainguard.report.page import render


@dataclass(frozen=True, slots=True)
class Report:
    """A rendered report and what the command prints about it."""

    html: str
    data: RunData
    integrity: Integrity

    def counts(self) -> dict[str, int]:
        """Findings per severity."""
        out = {s.value: 0 for s in Severity}
        for row in self.data.findings:
            out[row.finding.severity.value] += 1
        return out

    def failing(self, threshold: Severity) -> bool:
        """A finding at or above ``threshold``."""
        return any(r.finding.severity.at_least(threshold) for r in self.data.findings)


def default_ledger_url(run_dir: Path) -> str:
    """``sqlite:///RUN_DIR/ledger.sqlite``, where the guard writes by default.

    Raises:
        InputError: the directory or its ledger file does not exist.
    """
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    path = run_dir / "ledger.sqlite"
    if not path.is_file():
        raise InputError(
            f"{run_dir}: no ledger.sqlite in this run directory; pass --ledger URL "
            "if the run used another ledger"
        )
    return f"sqlite:///{path.resolve()}"


def build_report(
    url: str,
    *,
    run_id: str | None = None,
    public_key: ed25519.Ed25519PublicKey | None = None,
    head: SignedTreeHead | None = None,
    progress: Progress = NULL_PROGRESS,
    generated: str | None = None,
) -> Report:
    """Verify the ledger at ``url``, read the run's events and render the page.

    Raises:
        LedgerError: the ledger cannot be opened or read (a tampered ledger is not an
            error: it renders with a banner and ``report.integrity.failed``).
    """
    try:
        ledger = open_ledger(url, create=False, readonly=True)
    except TrainguardError:
        raise
    except Exception as exc:  # a foreign error while opening -> one line, exit 2
        raise LedgerError(f"cannot open the ledger {url}: {exc}") from exc
    with ledger:
        try:
            integrity = check_ledger(url, public_key, head, ledger.heads(), progress)
            data = collect(
                ledger.events(run=run_id),
                ledger_url=ledger.url,
                total=ledger.size(),
                progress=progress,
            )
        except TrainguardError:
            raise
        except Exception as exc:  # sqlite/psycopg errors on a damaged ledger
            raise LedgerError(f"cannot read the ledger {url}: {exc}") from exc
    if run_id is not None and data.events == 0:
        raise InputError(f"{url}: no events of run {run_id!r} in this ledger")
    stamp = generated or _dt.datetime.now(tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Report(render(data, integrity, generated=stamp), data, integrity)
