"""Heartbeats, self-integrity (``guard.disabled``), dead peers and hung ranks.

Every rank runs one daemon thread (``trainguard-heartbeat``) that, every
``heartbeat.seconds`` (default 2 s):

1. re-checks that the guard is still wired in -- the optimizer's step hooks are the
   guard's own bound methods, the Guard object is the one attached (not closed behind
   its back, not replaced in ``trainguard.guard.api``), its monitor list is intact,
   its class methods are the originals, trainguard's background threads are alive,
   the scanner policy the audit hook consults is unmodified, and every monitor that
   offers ``integrity(ctx)`` (audit hook attached, signal watcher alive and the main
   thread still masked, seed wrappers in place) says so. A bit that turns false is a
   ``guard.disabled`` finding from this rank at once;
2. writes ``run_dir/heartbeats/rank-N.json`` atomically (write + rename): step, the
   time the step last advanced, the integrity bits, and the training thread's current
   Python stack (``sys._current_frames``), so a hung rank's stack is on disk;
3. reads its peers' heartbeat files (same run directory) and reports, once each:
   ``process.killed`` for a peer on this host whose process is gone without having
   closed its guard; ``guard.disabled`` for a peer whose heartbeat stopped while its
   process lives, or whose integrity bits are broken; ``rank.hang`` for a peer whose
   step stopped advancing in its own code (see :func:`hang_suspects`: a rank blocked
   in a collective is a waiter, never the hung rank, whichever stopped first).

The supervisor (``trainguard run``) applies the same rules from outside the job, so
a rank that silences its own thread is still reported by the others and by it.
An adversary inside the process can forge its own heartbeat file; peers, the
supervisor and the ledger copies make that visible as a mismatch over time, and the
ledger copy (a ``heartbeat`` event every ``heartbeat.ledger_every`` beats) cannot be
rewritten unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainguard.guard.base import GuardContext
from trainguard.guard.findingutil import make_finding

_logger = logging.getLogger(__name__)

HEARTBEAT_DIR = "heartbeats"
"""Sub-directory of the run directory holding ``rank-N.json``."""


def heartbeat_path(run_dir: Path, rank: int) -> Path:
    """Where rank ``rank`` writes its heartbeat."""
    return run_dir / HEARTBEAT_DIR / f"rank-{rank}.json"


def write_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, default=str), encoding="utf-8")
    tmp.replace(path)


def read_heartbeats(run_dir: Path) -> dict[int, dict[str, Any]]:
    """Every readable heartbeat of the run: rank -> payload."""
    out: dict[int, dict[str, Any]] = {}
    directory = run_dir / HEARTBEAT_DIR
    try:
        files = sorted(directory.glob("rank-*.json"))
    except OSError:
        return out
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out[int(data["rank"])] = data
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
        return stat[stat.rfind(")") + 2] != "Z"
    except OSError:
        return True


WAITING_WHERE = ("torch", "trainguard")
"""Where a blocked training thread is waiting for its peers, not hung on its own: inside
torch (a collective, DDP's backward all-reduce, a barrier) or inside the guard's own
exchange. Only user (or unknown) code can be the reason a job stops."""


def hang_suspects(
    beats: Mapping[int, Mapping[str, Any]], now: float, hang_seconds: float, stale_seconds: float
) -> list[tuple[int | None, str]]:
    """Ranks that stopped making progress, with the reason.

    Rules: a live rank (fresh heartbeat, not closed) whose step has not advanced for
    ``hang_seconds`` is stuck. A stuck rank whose training thread is inside torch or
    the guard (:data:`WAITING_WHERE`) is a *waiter*: it is blocked in a collective on
    a peer. The hung ranks are the stuck ones that are not waiters (in user code). A
    waiter is never named while another live rank still advances -- the rank it waits
    for stopped a moment later (less than a heartbeat suffices) and is about to be
    stuck itself, in user code -- unless it has been stuck for twice ``hang_seconds``
    (a rank deadlocked in torch while its peers carry on without it). When every live
    rank is stuck inside torch, the job as a whole is hung (rank None).
    """
    live = {
        r: b
        for r, b in beats.items()
        if not b.get("closed") and now - float(b.get("time", 0)) <= stale_seconds
    }

    def idle(b: Mapping[str, Any]) -> float:
        return now - float(b.get("last_step_time", now))

    stuck = {r: b for r, b in live.items() if idle(b) > hang_seconds}
    if not stuck:
        return []
    advancing = sorted(set(live) - set(stuck))
    waiters = sorted(r for r, b in stuck.items() if b.get("stack_where") in WAITING_WHERE)
    outside = {r: b for r, b in stuck.items() if r not in waiters}
    if outside:
        also = f" while ranks {advancing} advance" if advancing else ""
        wait = f" while ranks {waiters} wait inside torch" if waiters else ""
        return [
            (
                r,
                f"step {b.get('step')} has not advanced for {idle(b):.0f}s, stuck in "
                f"{b.get('stack_where')} code ({b.get('stack_top')}){wait}{also}",
            )
            for r, b in sorted(outside.items())
        ]
    if advancing:
        return [
            (
                r,
                f"step {b.get('step')} has not advanced for {idle(b):.0f}s inside "
                f"{b.get('stack_where')} ({b.get('stack_top')}) while ranks {advancing} advance",
            )
            for r, b in sorted(stuck.items())
            if idle(b) > 2 * hang_seconds
        ]
    return [(None, f"every live rank {sorted(stuck)} is stuck inside torch (collective)")]


class _FrameKinds:
    """Classifies a stack's innermost frames: torch, trainguard, stdlib or user."""

    def __init__(self) -> None:
        import sysconfig

        import trainguard

        self.own = str(Path(trainguard.__file__).resolve().parent) + os.sep
        torch = sys.modules.get("torch")
        torch_file = getattr(torch, "__file__", None) if torch is not None else None
        self.torch = (
            str(Path(torch_file).resolve().parent) + os.sep if isinstance(torch_file, str) else "\0"
        )
        paths = sysconfig.get_paths()
        site = {os.path.realpath(paths[k]) for k in ("purelib", "platlib") if k in paths}
        self.stdlib = tuple(
            os.path.realpath(paths[k]) + os.sep
            for k in ("stdlib", "platstdlib")
            if k in paths and os.path.realpath(paths[k]) not in site
        )

    def kind(self, filename: str) -> str:
        if filename.startswith("<"):
            return "stdlib"
        real = os.path.realpath(filename)
        if real.startswith(self.own):
            return "trainguard"
        if real.startswith(self.torch):
            return "torch"
        if real.startswith(self.stdlib):
            return "stdlib"
        return "user"


def _stack_of(ident: int | None, kinds: _FrameKinds) -> tuple[list[str], str, str | None]:
    """(frames innermost last, kind of the innermost non-stdlib frame, its location)."""
    if ident is None:
        return [], "unknown", None
    frame = sys._current_frames().get(ident)
    frames: list[str] = []
    where = "unknown"
    top: str | None = None
    depth = 0
    while frame is not None and depth < 40:
        code = frame.f_code
        loc = f"{code.co_filename}:{frame.f_lineno}"
        frames.append(f"{loc} in {code.co_name}")
        if where == "unknown":
            k = kinds.kind(code.co_filename)
            if k != "stdlib":
                where, top = k, loc
        frame = frame.f_back
        depth += 1
    del frame
    frames.reverse()
    return frames, where, top


class HeartbeatMonitor:
    """The heartbeat thread and the self-integrity re-check (see the module docstring)."""

    name = "heartbeat"

    def __init__(self) -> None:
        """Create an idle monitor."""
        self.ctx: GuardContext | None = None
        self.interval = 2.0
        self.hang_seconds = 120.0
        self.stale_seconds = 10.0
        self.ledger_every = 5
        self.last_step = 0
        self.last_step_time = time.time()
        self.started_at = self.last_step_time
        self.beats = 0
        self.closed = False
        self.guard: Any = None
        self.snapshot: dict[str, Any] = {}
        self.broken: set[str] = set()
        self.suspect: set[str] = set()
        self.reported: set[tuple[Any, ...]] = set()
        self.training_ident: int | None = None
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._kinds: _FrameKinds | None = None
        self._host = socket.gethostname()

    # ------------------------------------------------------------------ start
    def start(self, ctx: GuardContext) -> None:
        """Read the settings and start the heartbeat thread."""
        self.ctx = ctx
        self.interval = float(ctx.settings.get("heartbeat.seconds", 2.0))
        self.hang_seconds = float(ctx.settings.get("heartbeat.hang_seconds", 120.0))
        self.stale_seconds = float(
            ctx.settings.get("heartbeat.stale_seconds", max(5.0 * self.interval, 10.0))
        )
        self.ledger_every = int(ctx.settings.get("heartbeat.ledger_every", 5))
        self.training_ident = ctx.settings.get("_training_thread") or threading.get_ident()
        self.last_step_time = time.time()
        self.started_at = self.last_step_time
        self._kinds = _FrameKinds()
        self.thread = threading.Thread(target=self._run, name="trainguard-heartbeat", daemon=True)
        self.thread.start()

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing before the step."""

    def after_step(self, ctx: GuardContext) -> None:
        """Note that the step advanced (two attribute writes)."""
        self.last_step = ctx.step
        self.last_step_time = time.time()

    def close(self, ctx: GuardContext) -> None:
        """Stop the thread; write a last heartbeat marked closed; last look at peers."""
        self._stop.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=max(2.0, 2 * self.interval))
        self.closed = True
        with contextlib.suppress(Exception):
            self.check_peers(ctx)
        with contextlib.suppress(Exception):
            self.beat(ctx)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        while not self._stop.is_set():
            try:
                self.beat(ctx)
                self.check_peers(ctx)
            except Exception:  # the heartbeat must keep beating
                _logger.exception("rank %d: heartbeat failed", ctx.rank)
            self._stop.wait(self.interval)

    def _find_guard(self, ctx: GuardContext) -> Any:
        if self.guard is not None:
            return self.guard
        api = sys.modules.get("trainguard.guard.api")
        if api is None:
            return None
        for guard in list(getattr(api, "_ACTIVE", [])):
            if getattr(guard, "ctx", None) is ctx:
                self.guard = guard
                self._take_snapshot(guard, api)
                return guard
        return None

    def _take_snapshot(self, guard: Any, api: Any) -> None:
        cls = type(guard)
        self.snapshot = {
            "api": api,
            "cls": cls,
            "methods": {
                name: vars(cls).get(name)
                for name in ("_on_pre_step", "_on_post_step", "_call", "_exchange", "close")
            },
            "api_funcs": {name: getattr(api, name, None) for name in ("watch", "active_guard")},
            "active_list": getattr(api, "_ACTIVE", None),
            "monitors": [id(m) for m in guard.monitors],
            "threads": [
                t
                for t in threading.enumerate()
                if t.name.startswith("trainguard-") and t is not threading.current_thread()
            ],
            "policy": _policy_methods(),
        }

    def integrity(self, ctx: GuardContext) -> dict[str, bool]:
        """Every integrity bit of this process (True = intact)."""
        bits: dict[str, bool] = {}
        guard = self._find_guard(ctx)
        if guard is None:
            # The Guard registers itself after every monitor started; give it time.
            return {"guard_found": False} if self.beats >= 5 else {}
        snap = self.snapshot
        api = snap["api"]
        bits["guard_open"] = not getattr(guard, "_closed", True) or self.closed
        bits["guard_registered"] = guard in list(getattr(api, "_ACTIVE", [])) or self.closed
        bits["guard_module"] = (
            getattr(api, "_ACTIVE", None) is snap["active_list"]
            and all(getattr(api, k, None) is v for k, v in snap["api_funcs"].items())
            and getattr(api, "Guard", None) is snap["cls"]
        )
        bits["guard_class"] = type(guard) is snap["cls"] and all(
            vars(snap["cls"]).get(k) is v for k, v in snap["methods"].items()
        )
        bits["monitors"] = [id(m) for m in getattr(guard, "monitors", [])] == snap["monitors"]
        bits["optimizer_hooks"] = self.closed or _hooks_in_place(guard)
        bits["threads"] = self.closed or all(t.is_alive() for t in snap["threads"])
        bits["scan_policy"] = _policy_methods() == snap["policy"]
        for monitor in list(getattr(guard, "monitors", [])):
            check = getattr(monitor, "integrity", None)
            if check is None or monitor is self:
                continue
            try:
                for key, value in check(ctx).items():
                    bits[key] = bool(value) or self.closed
            except Exception:  # noqa: BLE001 - a failing check counts as broken
                bits[f"{monitor.name}_check"] = False
        return bits

    def beat(self, ctx: GuardContext) -> dict[str, Any]:
        """One heartbeat: integrity re-check, file write, ledger copy."""
        with self._lock:
            bits = self.integrity(ctx)
            failing = {k for k, v in bits.items() if not v}
            # A bit must fail on two consecutive beats: Guard.close() flips its state
            # a moment before it closes this monitor.
            newly = (failing & self.suspect) - self.broken
            self.suspect = failing
            self.broken |= newly
            if newly and not self.closed:
                self._report_self(ctx, sorted(newly), bits)
            kinds = self._kinds or _FrameKinds()
            stack, where, top = _stack_of(self.training_ident, kinds)
            self.beats += 1
            payload = {
                "rank": ctx.rank,
                "world_size": ctx.world_size,
                "run": ctx.run_id,
                "pid": os.getpid(),
                "host": self._host,
                "step": self.last_step,
                "last_step_time": self.last_step_time,
                "time": time.time(),
                "interval": self.interval,
                "closed": self.closed,
                "beats": self.beats,
                "integrity": bits,
                "broken": sorted(self.broken),
                "stack": stack[-30:],
                "stack_where": where,
                "stack_top": top,
            }
            write_atomic(heartbeat_path(ctx.run_dir, ctx.rank), payload)
            if self.beats % self.ledger_every == 1 or newly or self.closed:
                ctx.sink.record("heartbeat", {k: v for k, v in payload.items() if k != "stack"})
            return payload

    def _report_self(self, ctx: GuardContext, broken: list[str], bits: Mapping[str, bool]) -> None:
        ctx.report(
            make_finding(
                ctx,
                "guard.disabled",
                f"Rank {ctx.rank}: the guard was tampered with from inside the job: "
                f"{', '.join(broken)} no longer intact.",
                evidence={"broken": broken, "integrity": dict(bits), "seen_by": ctx.rank},
            )
        )

    # ------------------------------------------------------------------- peers
    def check_peers(self, ctx: GuardContext) -> None:
        """Report dead, silenced, tampered and hung peers (once each)."""
        if ctx.world_size < 2:
            return
        beats = read_heartbeats(ctx.run_dir)
        now = time.time()
        for rank, beat in beats.items():
            if rank == ctx.rank or beat.get("run") != ctx.run_id or beat.get("closed"):
                continue
            if float(beat.get("time", 0)) < self.started_at - self.stale_seconds:
                continue  # left behind by an earlier attempt of the same run (elastic restart)
            pid = int(beat.get("pid", -1))
            same_host = beat.get("host") == self._host
            if same_host and pid > 0 and not pid_alive(pid):
                self._peer(
                    ctx,
                    ("killed", rank, pid),
                    "process.killed",
                    rank,
                    f"Rank {rank} (pid {pid}) died without closing its guard at step "
                    f"{beat.get('step')} (SIGKILL or a crash); seen by rank {ctx.rank}.",
                    {"pid": pid, "last_step": beat.get("step"), "last_beat": beat.get("time")},
                    actor={"pid": pid, "host": beat.get("host")},
                )
                continue
            if now - float(beat.get("time", 0)) > self.stale_seconds:
                self._peer(
                    ctx,
                    ("silent", rank, pid),
                    "guard.disabled",
                    rank,
                    f"Rank {rank}'s guard stopped beating {now - float(beat['time']):.0f}s ago "
                    "while its process is alive (heartbeat thread stopped); seen by rank "
                    f"{ctx.rank}.",
                    {"pid": pid, "last_beat": beat.get("time"), "seen_by": ctx.rank},
                )
            broken = beat.get("broken") or []
            if broken:
                self._peer(
                    ctx,
                    ("broken", rank, tuple(broken)),
                    "guard.disabled",
                    rank,
                    f"Rank {rank} reports its guard tampered with ({', '.join(broken)}); "
                    f"seen by rank {ctx.rank}.",
                    {"broken": broken, "seen_by": ctx.rank},
                )
        mine = dict(beats)
        mine[ctx.rank] = {
            "step": self.last_step,
            "last_step_time": self.last_step_time,
            "time": now,
            "closed": self.closed,
            "stack_where": _stack_of(self.training_ident, self._kinds or _FrameKinds())[1],
        }
        for hung, reason in hang_suspects(mine, now, self.hang_seconds, self.stale_seconds):
            if hung == ctx.rank:
                continue
            beat = beats.get(hung, {}) if hung is not None else {}
            self._peer(
                ctx,
                ("hang", hung, beat.get("step")),
                "rank.hang",
                hung,
                f"Rank {hung} is hung: {reason}; seen by rank {ctx.rank}.",
                {"reason": reason, "stack": beat.get("stack"), "pid": beat.get("pid")},
                location=beat.get("stack_top"),
            )

    def _peer(
        self,
        ctx: GuardContext,
        key: tuple[Any, ...],
        kind: str,
        rank: int | None,
        message: str,
        evidence: dict[str, Any],
        *,
        actor: dict[str, Any] | None = None,
        location: str | None = None,
    ) -> None:
        if key in self.reported:
            return
        self.reported.add(key)
        ctx.report(
            make_finding(
                ctx,
                kind,
                message,
                rank=rank,
                location=location,
                evidence={**evidence, "seen_by": ctx.rank},
                actor=actor,
            )
        )


def _hooks_in_place(guard: Any) -> bool:
    optimizer = getattr(guard, "optimizer", None)
    pairs = (
        ("_optimizer_step_pre_hooks", "pre_hook_handle", "_on_pre_step"),
        ("_optimizer_step_post_hooks", "post_hook_handle", "_on_post_step"),
    )
    for table_name, handle_name, method in pairs:
        table = getattr(optimizer, table_name, None)
        handle = getattr(guard, handle_name, None)
        if table is None or handle is None:
            return False
        hook = table.get(handle.id)
        if getattr(hook, "__self__", None) is not guard:
            return False
        if getattr(hook, "__func__", None) is not vars(type(guard)).get(method):
            return False
    return True


def _policy_methods() -> dict[str, Any]:
    policy_mod = sys.modules.get("trainguard.scan.policy")
    if policy_mod is None:
        return {}
    cls = policy_mod.Policy
    return {
        name: vars(cls).get(name)
        for name in ("classify", "_classify", "_danger", "_danger_path", "__init__")
    }


def stacks_of(beats: Iterable[Mapping[str, Any]]) -> dict[int, Sequence[str]]:
    """rank -> last recorded stack (for reports)."""
    return {int(b["rank"]): list(b.get("stack") or []) for b in beats if "rank" in b}


__all__ = [
    "HEARTBEAT_DIR",
    "WAITING_WHERE",
    "HeartbeatMonitor",
    "hang_suspects",
    "heartbeat_path",
    "pid_alive",
    "read_heartbeats",
    "write_atomic",
]
