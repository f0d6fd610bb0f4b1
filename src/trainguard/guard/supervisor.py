"""``trainguard run``: launch a training job, supervise it from outside, record everything.

The supervisor is the part of the guard that lives outside the training processes,
where code inside the job cannot reach it:

- it starts the command (``torchrun ...``, ``python train.py ...``) in its own
  session with ``TRAINGUARD_RUN_DIR``, ``TRAINGUARD_RUN_ID`` (and
  ``TRAINGUARD_LEDGER``) set, so every rank's guard writes to the same run;
- it follows the whole process tree (``/proc/<pid>/task/*/children``, every
  ``poll_seconds``) and records each process's exit. The exit status of a direct
  child comes from ``waitpid``; for a grandchild (a torchrun worker) it is read from
  ``/proc/<pid>/stat`` while the process is a zombie, before its parent reaps it. A
  process that died from a signal is ``process.killed`` naming the signal, the pid,
  its command line and its rank (from the heartbeats). A rank that vanished without
  closing its guard and whose status could not be read is ``process.killed`` with
  the signal unknown;
- it reads the ranks' heartbeats (``run_dir/heartbeats``) and reports
  ``guard.disabled`` (integrity bits broken, or a heartbeat that stopped while the
  process lives) and ``rank.hang`` (:func:`trainguard.guard.heartbeat.hang_suspects`,
  with the hung rank's stack); with ``hang_action="kill"`` it then ends the job;
- it forwards SIGINT, SIGTERM and SIGHUP to the job.

Exit code: the job's own exit code when it failed (``128 + signal`` when it died from
a signal); otherwise 1 when the run's ledger holds a finding at or above
``fail_on`` (default ``high``), else 0.

This module does not import torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.errors import GuardError, LedgerError, UsageError
from trainguard.core.exitcodes import EXIT_FINDINGS, EXIT_OK
from trainguard.core.findings import FINDING_KINDS, Finding, Severity
from trainguard.guard.heartbeat import hang_suspects, pid_alive, read_heartbeats

_logger = logging.getLogger(__name__)

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals the supervisor passes on to the job."""


@dataclass
class SupervisorConfig:
    """Settings of one supervised run."""

    run_dir: Path
    """The run directory (ledger, heartbeats, keys)."""
    command: Sequence[str]
    """The job's command line."""
    ledger_url: str | None = None
    """Ledger URL (default: sqlite in the run directory)."""
    run_id: str | None = None
    """Run identifier (default: a new random one)."""
    hang_seconds: float = 300.0
    """A rank whose step does not advance this long is hung."""
    stale_seconds: float = 30.0
    """A heartbeat older than this, from a live process, means the guard stopped."""
    poll_seconds: float = 0.05
    """Process-tree polling interval (exit statuses of grandchildren are read here)."""
    heartbeat_seconds: float = 0.5
    """Heartbeat reading interval."""
    hang_action: str = "report"
    """``report`` or ``kill`` (end the job after reporting rank.hang)."""
    fail_on: Severity = Severity.HIGH
    """Findings at or above this make the exit code 1 when the job itself succeeded."""
    grace_seconds: float = 10.0
    """Time the job's processes get after SIGTERM before SIGKILL."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the job."""


@dataclass
class ProcRecord:
    """What the supervisor knows about one process of the job."""

    pid: int
    ppid: int
    cmdline: str
    status: int | None = None
    """Raw wait status when known."""
    gone: bool = False


@dataclass
class SupervisorResult:
    """Outcome of a supervised run."""

    exit_code: int
    """What ``trainguard run`` exits with."""
    job_code: int | None
    """The job's own return code (negative: killed by that signal)."""
    run_id: str
    """The run identifier."""
    findings: list[Finding]
    """Every finding of the run in its ledger (all ranks and the supervisor)."""


def default_ledger(run_dir: Path) -> str:
    """``sqlite:///<run_dir>/ledger.sqlite``."""
    return f"sqlite:///{(run_dir / 'ledger.sqlite').resolve()}"


def open_run_ledger(url: str) -> Any:
    """Open the ledger or raise a one-line :class:`LedgerError`."""
    try:
        from trainguard.ledger import open_ledger
    except ImportError as exc:
        raise LedgerError("trainguard.ledger is not available in this installation") from exc
    try:
        return open_ledger(url)
    except LedgerError:
        raise
    except Exception as exc:  # foreign errors -> one line naming the URL
        raise LedgerError(f"cannot open the ledger {url}: {exc}") from exc


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(x) for x in (task / "children").read_text(encoding="ascii").split())
        except (OSError, ValueError):
            continue
    return out


def _stat(pid: int) -> tuple[str, int | None] | None:
    """(state letter, exit status field) of ``pid`` from /proc, None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            raw = handle.read()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    state = rest[0] if rest else "?"
    exit_code = None
    if len(rest) >= 50:  # field 52 of stat: exit status as waitpid reports it
        with contextlib.suppress(ValueError):
            exit_code = int(rest[49])
    return state, exit_code


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:1000]
    except OSError:
        return ""


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Supervisor:
    """Runs and watches one job (see the module docstring)."""

    def __init__(self, config: SupervisorConfig) -> None:
        """Prepare the run directory and the ledger.

        Raises:
            UsageError: no command, or a bad ``hang_action``.
            LedgerError: the ledger cannot be opened.
        """
        if not config.command:
            raise UsageError("trainguard run: give the job's command after --")
        if config.hang_action not in ("report", "kill"):
            raise UsageError("--hang-action must be report or kill")
        self.config = config
        self.run_dir = config.run_dir
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GuardError(f"{self.run_dir}: cannot create the run directory ({exc})") from exc
        self.run_id = config.run_id or uuid.uuid4().hex[:24]
        self.url = config.ledger_url or default_ledger(self.run_dir)
        self.ledger = open_run_ledger(self.url)
        self.host = socket.gethostname()
        self.procs: dict[int, ProcRecord] = {}
        self.reported: set[tuple[Any, ...]] = set()
        self.findings: list[Finding] = []
        self.child: subprocess.Popen[bytes] | None = None
        self.rank_of_pid: dict[int, int] = {}
        self.closed_ranks: set[int] = set()
        self._lock = threading.Lock()
        self._stop_requested = False
        self._killing_since: float | None = None
        self.on_finding: Callable[[Finding], None] | None = None

    # ---------------------------------------------------------------- ledger
    def _append(self, kind: str, payload: dict[str, Any]) -> None:
        with self._lock:
            try:
                self.ledger.append(
                    kind,
                    payload,
                    run=self.run_id,
                    rank=-1,
                    host=self.host,
                    pid=os.getpid(),
                    time=time.time(),
                )
            except Exception:  # the supervision goes on; the log keeps the event
                _logger.exception("cannot write %s to the ledger", kind)

    def report(
        self,
        key: tuple[Any, ...],
        kind: str,
        message: str,
        *,
        rank: int | None,
        step: int | None = None,
        location: str | None = None,
        actor: dict[str, Any] | None = None,
        evidence: dict[str, Any] | None = None,
        severity: Severity | None = None,
    ) -> None:
        """Write a finding once per ``key``."""
        if key in self.reported:
            return
        self.reported.add(key)
        finding = Finding(
            rule=kind,
            severity=severity or FINDING_KINDS[kind].severity,
            message=message,
            rank=rank,
            step=step,
            time=time.time(),
            location=location,
            actor=actor,
            evidence={**(evidence or {}), "observed_by": "supervisor"},
        )
        self.findings.append(finding)
        self._append("finding", finding.to_dict())
        _logger.warning("%s: %s", kind, message)
        if self.on_finding is not None:
            self.on_finding(finding)

    # ------------------------------------------------------------------- run
    def run(self) -> SupervisorResult:
        """Launch the job, supervise it to the end, return the outcome."""
        cfg = self.config
        env = dict(os.environ)
        env.update(cfg.env)
        env.update(
            {
                "TRAINGUARD_RUN_DIR": str(self.run_dir.resolve()),
                "TRAINGUARD_RUN_ID": self.run_id,
                "TRAINGUARD_SUPERVISOR_PID": str(os.getpid()),
            }
        )
        if cfg.ledger_url:
            env["TRAINGUARD_LEDGER"] = cfg.ledger_url
        self._append(
            "supervisor.start",
            {"command": list(cfg.command), "run_dir": str(self.run_dir), "pid": os.getpid()},
        )
        try:
            self.child = subprocess.Popen(list(cfg.command), env=env, start_new_session=True)
        except OSError as exc:
            raise UsageError(f"cannot start {cfg.command[0]!r}: {exc.strerror}") from exc
        self.procs[self.child.pid] = ProcRecord(self.child.pid, os.getpid(), " ".join(cfg.command))
        previous = self._install_forwarding()
        try:
            code = self._loop()
        finally:
            self._restore_forwarding(previous)
        self._append("supervisor.exit", {"job_code": code})
        with contextlib.suppress(Exception):
            close = getattr(self.ledger, "close", None)
            if callable(close):
                close()
        findings = self.run_findings()
        if code is not None and code != 0:
            exit_code = 128 - code if code < 0 else code
        elif any(f.severity.at_least(cfg.fail_on) for f in findings):
            exit_code = EXIT_FINDINGS
        else:
            exit_code = EXIT_OK
        return SupervisorResult(exit_code, code, self.run_id, findings)

    def run_findings(self) -> list[Finding]:
        """Every finding of this run in the ledger (the ranks' and the supervisor's)."""
        from trainguard.guard.checks.ledger_view import event_fields

        try:
            ledger = open_run_ledger(self.url)
            events = [event_fields(e) for e in ledger.events(kind="finding")]
            with contextlib.suppress(Exception):
                ledger.close()
        except (LedgerError, Exception):  # fall back to what the supervisor saw itself
            _logger.exception("cannot read the run's findings back")
            return list(self.findings)
        out = []
        for event in events:
            if event.get("run") not in (None, self.run_id):
                continue
            with contextlib.suppress(KeyError, ValueError, TypeError):
                out.append(Finding.from_dict(event["payload"]))
        return out

    def _install_forwarding(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for sig in FORWARDED:
            previous[sig] = signal.signal(sig, self._forward)
        return previous

    def _restore_forwarding(self, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _forward(self, signum: int, frame: Any) -> None:
        child = self.child
        self._append("supervisor.signal", {"signal": _signal_name(signum)})
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    def _loop(self) -> int | None:
        cfg = self.config
        child = self.child
        assert child is not None
        last_beat_check = 0.0
        ended_at: float | None = None
        code: int | None = None
        while True:
            self._poll_tree()
            now = time.monotonic()
            if now - last_beat_check >= cfg.heartbeat_seconds:
                last_beat_check = now
                self._check_heartbeats()
            if code is None:
                code = child.poll()
                if code is not None:
                    ended_at = now
                    self._child_exited(code)
            if self._killing_since is not None and now - self._killing_since > cfg.grace_seconds:
                self._kill_group(signal.SIGKILL)
            if ended_at is not None:
                alive = [p for p in self.procs.values() if not p.gone]
                if not alive:
                    break
                if now - ended_at > cfg.grace_seconds:
                    for proc in alive:
                        self._append("process.leftover", {"pid": proc.pid, "cmdline": proc.cmdline})
                    self._kill_group(signal.SIGKILL)
                    time.sleep(cfg.poll_seconds)
                    self._poll_tree()
                    break
            time.sleep(cfg.poll_seconds)
        self._check_heartbeats()
        return code

    # ----------------------------------------------------------------- tree
    def _poll_tree(self) -> None:
        child = self.child
        assert child is not None
        frontier = [child.pid]
        seen: set[int] = set()
        while frontier:
            pid = frontier.pop()
            if pid in seen:
                continue
            seen.add(pid)
            for kid in _children(pid):
                if kid not in self.procs:
                    self.procs[kid] = ProcRecord(kid, pid, _cmdline(kid))
                    self._append(
                        "process.start", {"pid": kid, "ppid": pid, "cmdline": _cmdline(kid)}
                    )
                frontier.append(kid)
        for proc in list(self.procs.values()):
            if proc.gone or proc.pid == child.pid:
                continue
            stat = _stat(proc.pid)
            if stat is None:
                proc.gone = True
                self._process_ended(proc)
            elif stat[0] == "Z" and stat[1] is not None:
                proc.status = stat[1]

    def _child_exited(self, code: int) -> None:
        child = self.child
        assert child is not None
        proc = self.procs[child.pid]
        proc.gone = True
        proc.status = (-code) & 0x7F if code < 0 else (code & 0xFF) << 8
        self._process_ended(proc)

    def _process_ended(self, proc: ProcRecord) -> None:
        self._learn_ranks()
        rank = self.rank_of_pid.get(proc.pid)
        status = proc.status
        signum: int | None = None
        exit_code: int | None = None
        if status is not None:
            if status & 0x7F:
                signum = status & 0x7F
            else:
                exit_code = (status >> 8) & 0xFF
        self._append(
            "process.exit",
            {
                "pid": proc.pid,
                "cmdline": proc.cmdline,
                "rank": rank,
                "signal": _signal_name(signum) if signum else None,
                "exit_code": exit_code,
                "status_known": status is not None,
            },
        )
        who = f"rank {rank} " if rank is not None else ""
        actor = {"pid": proc.pid, "cmdline": proc.cmdline, "host": self.host}
        if signum is not None:
            name = _signal_name(signum)
            self.report(
                ("killed", proc.pid),
                "process.killed",
                f"{who}process {proc.pid} ({proc.cmdline[:200]!r}) was killed by {name}.",
                rank=rank,
                actor=actor,
                evidence={"pid": proc.pid, "signal": name, "signum": signum, "rank": rank},
            )
        elif status is None and rank is not None and rank not in self.closed_ranks:
            self.report(
                ("killed", proc.pid),
                "process.killed",
                f"rank {rank} process {proc.pid} ({proc.cmdline[:200]!r}) vanished without "
                "closing its guard; its exit status was reaped before it could be read "
                "(SIGKILL or a crash).",
                rank=rank,
                actor=actor,
                evidence={"pid": proc.pid, "signal": None, "rank": rank},
            )

    def _learn_ranks(self) -> None:
        for rank, beat in read_heartbeats(self.run_dir).items():
            if beat.get("run") not in (None, self.run_id):
                continue
            pid = beat.get("pid")
            if isinstance(pid, int):
                self.rank_of_pid[pid] = rank
            if beat.get("closed"):
                self.closed_ranks.add(rank)

    # ------------------------------------------------------------ heartbeats
    def _check_heartbeats(self) -> None:
        cfg = self.config
        beats = {
            r: b
            for r, b in read_heartbeats(self.run_dir).items()
            if b.get("run") in (None, self.run_id)
        }
        now = time.time()
        for rank, beat in beats.items():
            pid = beat.get("pid")
            if isinstance(pid, int):
                self.rank_of_pid[pid] = rank
            if beat.get("closed"):
                self.closed_ranks.add(rank)
                continue
            broken = beat.get("broken") or []
            if broken:
                self.report(
                    ("broken", rank, tuple(broken)),
                    "guard.disabled",
                    f"rank {rank}'s guard was tampered with from inside the job: "
                    f"{', '.join(broken)} no longer intact.",
                    rank=rank,
                    step=beat.get("step"),
                    evidence={"broken": broken, "integrity": beat.get("integrity")},
                )
            alive = isinstance(pid, int) and pid_alive(pid)
            if alive and now - float(beat.get("time", 0)) > cfg.stale_seconds:
                self.report(
                    ("silent", rank, pid),
                    "guard.disabled",
                    f"rank {rank}'s guard stopped beating {now - float(beat['time']):.0f}s ago "
                    f"while its process {pid} is alive (heartbeat thread stopped).",
                    rank=rank,
                    step=beat.get("step"),
                    evidence={"pid": pid, "last_beat": beat.get("time")},
                )
        live = {
            r: b for r, b in beats.items() if isinstance(b.get("pid"), int) and pid_alive(b["pid"])
        }
        for hung, reason in hang_suspects(live, now, cfg.hang_seconds, cfg.stale_seconds):
            beat = live.get(hung, {}) if hung is not None else {}
            self.report(
                ("hang", hung, beat.get("step")),
                "rank.hang",
                f"rank {hung} is hung: {reason}.",
                rank=hung,
                step=beat.get("step"),
                location=beat.get("stack_top"),
                evidence={
                    "reason": reason,
                    "stack": beat.get("stack"),
                    "pid": beat.get("pid"),
                    "stacks": {str(r): b.get("stack") for r, b in live.items()},
                    "where": {str(r): b.get("stack_where") for r, b in live.items()},
                },
            )
            if cfg.hang_action == "kill" and self._killing_since is None:
                self._append("supervisor.kill", {"reason": "rank.hang", "rank": hung})
                self._kill_group(signal.SIGTERM)
                self._killing_since = time.monotonic()

    def _kill_group(self, sig: signal.Signals) -> None:
        child = self.child
        if child is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)


def supervise(config: SupervisorConfig) -> SupervisorResult:
    """Run ``config.command`` under a :class:`Supervisor`."""
    return Supervisor(config).run()


__all__ = [
    "FORWARDED",
    "ProcRecord",
    "Supervisor",
    "SupervisorConfig",
    "SupervisorResult",
    "default_ledger",
    "open_run_ledger",
    "supervise",
]
