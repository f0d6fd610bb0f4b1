"""Running the drill: one supervised, guarded job per scenario, each in its own directory.

Every scenario runs the same small job (``job/``: a two-layer transformer language
model, DDP over gloo on the CPU by default) under the supervisor of ``trainguard
run``, in a directory of its own under a temporary root (or ``--keep DIR``):
``job/`` (the copied training files), ``out/`` (the ranks' logs and the injection
records) and ``run/`` (the run directory: ledger, heartbeats, keys, checkpoints).
The clean control run goes first; it also writes the signed checkpoints and the data
order that the resume scenarios start from (in a copy of its run directory, so the
guard sees the recorded lineage). Every wait is bounded: a job still running at the
scenario's deadline is killed with its whole process group and the scenario is
judged on what its ledger holds by then (a sabotage that was never caught counts as
missed).

Monitors named in ``TRAINGUARD_DRILL_EXCLUDE_MONITORS`` (comma-separated) are
switched off in the drill's jobs. This exists to test the drill itself: a drill whose
detection is deliberately weakened must report the sabotage as missed and fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from trainguard.core.errors import TrainguardError, UsageError
from trainguard.core.findings import Finding
from trainguard.drill.report import (
    DrillReport,
    Injection,
    Outcome,
    RunFacts,
    ScenarioResult,
    judge,
)
from trainguard.drill.scenarios import CLEAN, CLEAN_SAVE_AT, Resume, Scenario, select
from trainguard.guard.heartbeat import read_heartbeats
from trainguard.guard.supervisor import Supervisor, SupervisorConfig, SupervisorResult

_logger = logging.getLogger(__name__)

JOB_TEMPLATE = Path(__file__).with_name("job")
"""The training job's files, copied into every scenario directory."""
JOB_FILES = ("train.py", "team_utils.py", "launch.py")
EXCLUDE_ENV = "TRAINGUARD_DRILL_EXCLUDE_MONITORS"
"""For testing the drill only: guard monitors to switch off in its jobs."""
TARGET_RANK = 1
"""The rank that single-rank sabotage hits."""
REPORTED_WORLD_SIZE = 512
"""The job size the insider's "large jobs only" gate is told (the job has 2 ranks)."""

GUARD_SETTINGS: dict[str, object] = {
    # The guard's defaults are sized for jobs that run for hours; the drill's jobs run
    # for seconds, so the clock-driven checks beat faster. Thresholds stay the defaults.
    "heartbeat.seconds": 0.3,
    "heartbeat.hang_seconds": 4.0,
    "heartbeat.stale_seconds": 5.0,
    "patch_check_seconds": 0.5,
}
"""Guard settings of the drill's jobs."""
HANG_SECONDS = 6.0
"""The supervisor's hang timeout (``trainguard run --hang-timeout``). Longer than the
ranks' own (``heartbeat.hang_seconds``) so that the peers have named the hung rank
before the supervisor ends the job."""
STALE_SECONDS = 5.0
"""The supervisor's silent-heartbeat timeout."""
GRACE_SECONDS = 3.0
"""Time between SIGTERM and SIGKILL when a job is ended."""
STRANGER_LINGER_SECONDS = 1.0
"""How long the stranger process stays alive after signalling (so it can be named)."""

_STRANGER = (
    "import os, sys, time\n"
    "sent = time.time()\n"
    "os.kill(int(sys.argv[1]), int(sys.argv[2]))\n"
    "open(sys.argv[3], 'w').write(repr(sent))\n"
    "time.sleep(float(sys.argv[4]))\n"
)
"""The process outside the job that signals a rank (it has nothing to do with the job)."""


@dataclass(frozen=True, slots=True)
class DrillOptions:
    """What ``trainguard drill`` was asked to do."""

    only: tuple[str, ...] = ()
    """Sabotages to run (all when empty); the clean run always runs."""
    nproc: int = 2
    """Ranks of the training job."""
    device: str = "cpu"
    """``cpu`` (gloo) or ``cuda`` (NCCL, one GPU per rank)."""
    keep: Path | None = None
    """Keep the scenario directories here (default: a temporary directory, removed)."""
    timeout: float = 120.0
    """Deadline of one scenario in seconds."""
    parallel: int = 2
    """Sabotage scenarios run at the same time (the clean run always runs alone). Two at
    once overlap one job's waits (heartbeats, a hang timeout, teardown) with another's
    work (docs/drill.md, "Cost", has the measurements)."""
    exclude_monitors: tuple[str, ...] = ()
    """Guard monitors switched off in the jobs (testing the drill; see the module doc)."""


class DrillObserver(Protocol):
    """Receives the drill's progress (the CLI shows it; the library prints nothing)."""

    def scenario_started(self, scenario: Scenario, index: int, total: int) -> None:
        """A scenario's job is being started (``index`` counts from 1)."""

    def scenario_finished(self, result: ScenarioResult) -> None:
        """A scenario was judged."""


class NullObserver:
    """The library default: report nothing."""

    def scenario_started(self, scenario: Scenario, index: int, total: int) -> None:
        """Ignore the start."""

    def scenario_finished(self, result: ScenarioResult) -> None:
        """Ignore the result."""


def excluded_monitors_from_env() -> tuple[str, ...]:
    """Monitors named in ``TRAINGUARD_DRILL_EXCLUDE_MONITORS`` (testing the drill)."""
    raw = os.environ.get(EXCLUDE_ENV, "")
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def validate(options: DrillOptions) -> tuple[Scenario, ...]:
    """Check the options before anything starts; return the sabotages to run.

    Raises:
        UsageError: bad option values, unknown sabotage names, no torch.
    """
    scenarios = select(list(options.only))
    if options.nproc < 2:
        raise UsageError(
            "--nproc must be at least 2: the cross-rank sabotage needs a peer to compare with"
        )
    if options.device not in ("cpu", "cuda"):
        raise UsageError("--device must be cpu or cuda")
    if options.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    if options.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    if importlib.util.find_spec("torch") is None:
        raise UsageError("trainguard drill runs a PyTorch job: install torch first")
    if options.keep is not None and options.keep.exists():
        if not options.keep.is_dir():
            raise UsageError(f"--keep {options.keep}: not a directory")
        if any(options.keep.iterdir()):
            raise UsageError(f"--keep {options.keep}: the directory is not empty")
    return scenarios


def run_drill(options: DrillOptions, observer: DrillObserver | None = None) -> DrillReport:
    """Run the clean job, then every selected sabotage; return the scorecard.

    Raises:
        UsageError: see :func:`validate`.
    """
    scenarios = validate(options)
    seen = observer or NullObserver()
    started = time.monotonic()
    if options.keep is not None:
        options.keep.mkdir(parents=True, exist_ok=True)
        root = options.keep.resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="trainguard-drill-"))
    runner = _Runner(root, options)
    total = len(scenarios) + 1
    try:
        seen.scenario_started(CLEAN, 1, total)
        clean = runner.run(CLEAN, None)
        seen.scenario_finished(clean)
        clean_dir = root / CLEAN.name / "run"
        wrote = all((clean_dir / f"ckpt-{at}.pt").is_file() for at in CLEAN_SAVE_AT)
        # Without the clean run's checkpoints the resume scenarios are errors, never "caught".
        clean_run = clean_dir if wrote else None

        def one(item: tuple[int, Scenario]) -> ScenarioResult:
            index, scenario = item
            seen.scenario_started(scenario, index, total)
            result = runner.run(scenario, clean_run)
            seen.scenario_finished(result)
            return result

        numbered = list(enumerate(scenarios, start=2))
        if options.parallel > 1 and len(numbered) > 1:
            pool = ThreadPoolExecutor(max_workers=options.parallel)
            try:
                results = list(pool.map(one, numbered))
            except BaseException:  # Ctrl-C: kill the running jobs, start no more, re-raise
                runner.kill_all()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
        else:
            results = [one(item) for item in numbered]
    finally:
        runner.kill_all()
        if options.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return DrillReport(
        clean=clean,
        scenarios=tuple(results),
        seconds=time.monotonic() - started,
        nproc=options.nproc,
        device=options.device,
        excluded_monitors=options.exclude_monitors,
        root=str(root) if options.keep is not None else None,
    )


class _Runner:
    """Runs scenarios under ``root``; remembers live jobs so they can all be killed."""

    def __init__(self, root: Path, options: DrillOptions) -> None:
        self.root = root
        self.options = options
        self._live: set[Supervisor] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def kill_all(self) -> None:
        """Kill every job still running and any started later (an interrupted drill leaves
        nothing behind)."""
        with self._lock:
            self._stopped = True
            live = list(self._live)
        for supervisor in live:
            _kill_job(supervisor)

    def run(self, scenario: Scenario, clean_run: Path | None) -> ScenarioResult:
        """Run one scenario to its end or its deadline and judge it."""
        t0 = time.monotonic()
        directory = self.root / scenario.name
        out = directory / "out"
        run_dir = directory / "run"
        job = directory / "job"
        job.mkdir(parents=True)
        out.mkdir()
        for name in JOB_FILES:
            shutil.copyfile(JOB_TEMPLATE / name, job / name)
        args = self._train_args(scenario)
        if scenario.resume is not Resume.NONE:
            if clean_run is None:
                return self._not_run(scenario, t0, "the clean run wrote no checkpoints to resume")
            args += ["--resume", str(_prepare_resume(scenario.resume, clean_run, run_dir))]
        command = [
            sys.executable,
            str(job / "launch.py"),
            "--nproc",
            str(self.options.nproc),
            "--out",
            str(out),
            "--",
            *args,
        ]
        config = SupervisorConfig(
            run_dir=run_dir,
            command=command,
            hang_seconds=HANG_SECONDS,
            stale_seconds=STALE_SECONDS,
            grace_seconds=GRACE_SECONDS,
            hang_action="kill",
            env=_job_env(scenario, out),
        )
        try:
            supervisor = Supervisor(config)
        except TrainguardError as exc:
            return self._not_run(scenario, t0, f"cannot start the supervisor: {exc}")
        outcome, injection, timed_out = self._supervise(scenario, supervisor, run_dir, out)
        findings: list[Finding] = outcome.findings if outcome is not None else []
        facts = RunFacts(
            job_code=outcome.job_code if outcome is not None else None,
            seconds=time.monotonic() - t0,
            injection=injection or read_injection(out),
            timed_out=timed_out,
            payload_ran=any(out.glob("backdoor-ran-rank*")),
            log_tail=_log_tail(out),
        )
        result = judge(scenario, findings, facts, strip=str(self.root))
        if self.options.keep is not None:
            result = replace(result, run_dir=str(directory))
        return result

    def _train_args(self, scenario: Scenario) -> list[str]:
        settings = dict(GUARD_SETTINGS)
        if self.options.exclude_monitors:
            settings["exclude_monitors"] = list(self.options.exclude_monitors)
        args = [
            "--steps",
            str(scenario.steps),
            "--device",
            self.options.device,
            "--settings",
            json.dumps(settings),
        ]
        if scenario.min_seconds:
            args += ["--min-seconds", str(scenario.min_seconds)]
        if scenario.is_control:
            args += ["--save-at", ",".join(str(s) for s in CLEAN_SAVE_AT)]
        return args

    def _supervise(
        self, scenario: Scenario, supervisor: Supervisor, run_dir: Path, out: Path
    ) -> tuple[SupervisorResult | None, Injection | None, bool]:
        """Run the supervised job in a thread, inject from outside if needed, bound it."""
        box: list[SupervisorResult] = []
        failures: list[BaseException] = []

        def target() -> None:
            try:
                box.append(supervisor.run())
            except BaseException as exc:  # noqa: BLE001 - reported below, never lost
                failures.append(exc)

        deadline = time.monotonic() + self.options.timeout
        thread = threading.Thread(target=target, name=f"drill-{scenario.name}", daemon=True)
        with self._lock:
            self._live.add(supervisor)
            stopped = self._stopped
        injection = None
        timed_out = False
        try:
            thread.start()
            if stopped:
                deadline = time.monotonic()  # the drill is being torn down
            elif scenario.stranger_signal is not None:
                injection = _signal_from_stranger(
                    scenario.stranger_signal, scenario.inject_step, run_dir, out, deadline
                )
            thread.join(max(deadline - time.monotonic(), 0.0))
            if thread.is_alive():
                timed_out = True
                _logger.warning("drill: %s ran past its deadline; killing it", scenario.name)
                _kill_job(supervisor)
                thread.join(GRACE_SECONDS + 30.0)
        finally:
            if thread.is_alive():
                _kill_job(supervisor)
            with self._lock:
                self._live.discard(supervisor)
        if failures:
            _logger.error("drill: %s: the supervisor failed: %r", scenario.name, failures[0])
        return (box[0] if box else None), injection, timed_out

    def _not_run(self, scenario: Scenario, t0: float, why: str) -> ScenarioResult:
        return ScenarioResult(
            name=scenario.name,
            move=scenario.move,
            outcome=Outcome.ERROR,
            expected=scenario.expected,
            evidence=why,
            seconds=time.monotonic() - t0,
        )


def _job_env(scenario: Scenario, out: Path) -> dict[str, str]:
    """Environment of the job: the sabotage switch and a fixed, clean guard set-up."""
    import trainguard

    package_parent = str(Path(trainguard.__file__).resolve().parents[1])
    python_path = os.environ.get("PYTHONPATH", "")
    return {
        "DRILL_SABOTAGE": "none" if scenario.is_control else scenario.name,
        "DRILL_INJECT_STEP": str(scenario.inject_step),
        "DRILL_TARGET_RANK": str(TARGET_RANK),
        "DRILL_OUT": str(out),
        "DRILL_REPORTED_WORLD_SIZE": str(REPORTED_WORLD_SIZE),
        "PYTHONPATH": os.pathsep.join(p for p in (package_parent, python_path) if p),
        "OMP_NUM_THREADS": "1",
        # A user's own allowlist must not change what the drill proves.
        "TRAINGUARD_AUDIT_ALLOW": "",
    }


def _prepare_resume(mode: Resume, clean_run: Path, run_dir: Path) -> Path:
    """Copy the clean run directory; return the checkpoint to resume from."""
    shutil.copytree(clean_run, run_dir, ignore=shutil.ignore_patterns("heartbeats"))
    newest = run_dir / f"ckpt-{CLEAN_SAVE_AT[-1]}.pt"
    if mode is Resume.OLDEST:
        return run_dir / f"ckpt-{CLEAN_SAVE_AT[0]}.pt"
    if mode is Resume.ALTERED:
        alter_tensor_byte(newest)
    return newest


def alter_tensor_byte(checkpoint: Path) -> str:
    """Flip the lowest bit of one byte inside the largest tensor of a torch checkpoint.

    The checkpoint is a zip of stored (uncompressed) members; the byte is located
    through the member's local header so that tensor data, not zip metadata, changes.
    Returns the member name.
    """
    with zipfile.ZipFile(checkpoint) as archive:
        members = [i for i in archive.infolist() if "/data/" in i.filename]
        if not members:
            raise UsageError(f"{checkpoint}: no tensor data in this checkpoint")
        target = max(members, key=lambda i: i.file_size)
    data = bytearray(checkpoint.read_bytes())
    header = target.header_offset
    name_len = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_len = int.from_bytes(data[header + 28 : header + 30], "little")
    start = header + 30 + name_len + extra_len
    data[start + target.file_size // 2] ^= 0x01
    checkpoint.write_bytes(bytes(data))
    return target.filename


def _ready_pid(out: Path, rank: int) -> int | None:
    path = out / f"ready-rank{rank}"
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _signal_from_stranger(
    sig: signal.Signals, at_step: int, run_dir: Path, out: Path, deadline: float
) -> Injection | None:
    """Once the target rank has run ``at_step`` steps, a separate process signals it."""
    pid: int | None = None
    step = 0
    while time.monotonic() < deadline:
        pid = _ready_pid(out, TARGET_RANK)
        beat = read_heartbeats(run_dir).get(TARGET_RANK) or {}
        step = int(beat.get("step") or 0)
        if pid is not None and step >= at_step:
            break
        time.sleep(0.05)
    else:
        return None
    stamp = out / "stranger-sent"
    stranger = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STRANGER,
            str(pid),
            str(int(sig)),
            str(stamp),
            str(STRANGER_LINGER_SECONDS),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        stranger.wait(timeout=STRANGER_LINGER_SECONDS + 15.0)
    except subprocess.TimeoutExpired:
        stranger.kill()
        stranger.wait(timeout=5.0)
    try:
        sent = float(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # The step is left unknown: the heartbeat that told it is up to a beat old, so a step
    # difference would measure the heartbeat, not the detection (seconds are exact).
    return Injection(
        time=sent,
        step=None,
        rank=TARGET_RANK,
        what=f"{sig.name} sent to rank {TARGET_RANK} by process {stranger.pid}",
    )


def read_injection(out: Path) -> Injection | None:
    """The earliest injection the job recorded (``injected-rank<R>.json``), if any."""
    rows = []
    for path in sorted(out.glob("injected-rank*.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
            rows.append(
                Injection(
                    time=float(row["time"]),
                    step=int(row["step"]),
                    rank=int(row["rank"]),
                    what=str(row["what"]),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if not rows:
        return None
    first = min(rows, key=lambda r: r.time)
    ranks = {r.rank for r in rows}
    return first if len(ranks) == 1 else replace(first, rank=None)


def _kill_job(supervisor: Supervisor) -> None:
    """SIGKILL the job's whole process group (it runs in a session of its own)."""
    child = supervisor.child
    if child is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def _log_tail(out: Path, limit: int = 2000) -> str:
    parts = []
    for log in sorted(out.glob("rank*.log")):
        with contextlib.suppress(OSError):
            parts.append(log.read_text(encoding="utf-8", errors="replace")[-limit:])
    return "\n".join(parts)
