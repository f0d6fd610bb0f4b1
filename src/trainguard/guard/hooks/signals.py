"""``process.signal``: who sent SIGTERM / SIGINT / SIGHUP / SIGUSR1 / SIGUSR2 to this rank.

A Python signal handler is not told who sent the signal. The kernel does tell a
thread that *waits* for a blocked signal: ``signal.sigwaitinfo`` returns the sender's
pid and uid (``si_pid``, ``si_uid``). So the watcher

1. blocks the watched signals in the calling thread (call it from the main thread,
   as early as possible: every thread started afterwards inherits the mask);
2. runs a daemon thread that loops on ``sigwaitinfo``; for each signal it records a
   ``process.signal`` finding naming the sender (pid, uid, user, command line and
   parent chain, read with psutil while the sender still exists), then
3. delivers the signal's normal behaviour:

   - a Python handler (``signal.signal(...)``, SIGINT's KeyboardInterrupt): it runs
     in the main thread, exactly as Python runs handlers, through
     ``_thread.interrupt_main(signum)``; the main thread is also woken from a
     blocking sleep or wait (a no-op SIGURG handler interrupts the system call);
   - ``SIG_DFL``: the sinks are flushed, the signal is unblocked in the watcher thread
     and sent to it, so the process dies from that signal (exit status -SIG) as it
     would have without the guard;
   - ``SIG_IGN``: recorded, nothing else.

Threads started *before* the watcher (gloo's and torch's threads when ``watch()`` is
called after ``init_process_group``) do not block the signals; the kernel may pick
one of them, and then Python's normal handling runs without a sender. The watcher
lists such threads in a ``signals.coverage`` ledger event; install it early with
``trainguard.guard.hooks.install_early()`` (or the ``trainguard run`` launcher, which
does it through ``TRAINGUARD_EARLY_HOOKS``) to close the gap.

Children: ``fork``-ed children (multiprocessing, DataLoader workers) get the signals
unblocked again (``os.register_at_fork``). ``subprocess`` children would inherit the
blocked mask through ``exec``; a small audit hook on ``subprocess.Popen`` unblocks
the signals in the calling thread for the duration of the fork/exec and blocks them
again when it returns (a one-shot per-thread profile function), and ``os.exec*``
unblocks them for good.

SIGKILL and SIGSTOP cannot be caught by anyone: a SIGKILL-ed rank is seen by the
supervisor and by its peers (``process.killed``).
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import Any

from trainguard.core.findings import FINDING_KINDS
from trainguard.guard.base import GuardContext
from trainguard.guard.findingutil import make_finding

_logger = logging.getLogger(__name__)

WATCHED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
"""Signals whose sender is recorded."""

_SI_CODES = {0: "SI_USER (kill)", -1: "SI_QUEUE", -6: "SI_TKILL (tgkill)", 0x80: "SI_KERNEL"}


def describe_process(pid: int, depth: int = 4) -> dict[str, Any]:
    """Sender record: pid, uid, user, command line, exe, and its parent chain."""
    info: dict[str, Any] = {"pid": pid, "alive": False}
    if pid <= 0:
        return info
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]

        proc = psutil.Process(pid)
        with proc.oneshot():
            info.update(
                alive=True,
                name=proc.name(),
                cmdline=" ".join(proc.cmdline())[:1000],
                user=_safe(proc.username),
                uid=proc.uids().real,
                exe=_safe(proc.exe),
                ppid=proc.ppid(),
                create_time=proc.create_time(),
            )
        chain: list[dict[str, Any]] = []
        parent = proc.parent()
        while parent is not None and len(chain) < depth:
            chain.append(
                {"pid": parent.pid, "name": parent.name(), "cmdline": _cmdline(parent)[:300]}
            )
            parent = parent.parent()
        info["parents"] = chain
    except Exception as exc:  # noqa: BLE001 - gone, or not ours to read: keep what we have
        info["error"] = type(exc).__name__
    return info


def _safe(getter: Any) -> Any:
    try:
        return getter()
    except Exception:  # noqa: BLE001 - access denied (another user's process): not fatal
        return None


def _cmdline(proc: Any) -> str:
    try:
        return " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - zombie or access denied
        return ""


@dataclasses.dataclass
class SignalEvent:
    """One signal taken by the watcher."""

    signum: int
    name: str
    sender_pid: int
    sender_uid: int
    code: int
    sender: dict[str, Any]
    when: float
    action: str
    self_sent: bool

    def message(self, rank: int) -> str:
        """One sentence for the finding."""
        who = self.sender.get("cmdline") or self.sender.get("name") or "exited process"
        origin = "this process itself" if self.self_sent else f"pid {self.sender_pid}"
        return (
            f"{self.name} sent to rank {rank} (pid {os.getpid()}) by {origin} "
            f"(uid {self.sender_uid}, user {self.sender.get('user')}, command {who!r}); "
            f"action: {self.action}."
        )


def _mask_bits(signals: Iterable[int]) -> int:
    bits = 0
    for sig in signals:
        bits |= 1 << (int(sig) - 1)
    return bits


def thread_masks() -> dict[int, tuple[str, int]]:
    """Every thread of this process: native id -> (name, blocked-signal bit mask)."""
    out: dict[int, tuple[str, int]] = {}
    task_dir = Path("/proc/self/task")
    try:
        tids = list(task_dir.iterdir())
    except OSError:
        return out
    for tdir in tids:
        try:
            name = (tdir / "comm").read_text().strip()
        except OSError:
            continue
        mask = blocked_mask(int(tdir.name))
        if mask is not None:
            out[int(tdir.name)] = (name, mask)
    return out


def blocked_mask(native_id: int) -> int | None:
    """The blocked-signal bit mask of one thread of this process (None if it is gone).

    One ``/proc`` read: the heartbeat checks the main thread every beat, and reading
    every thread's status (torch and gloo start dozens) cost it 3 ms a beat.
    """
    try:
        with open(f"/proc/self/task/{native_id}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("SigBlk:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


class SignalWatcher:
    """The process's one watcher thread (see the module docstring)."""

    def __init__(self, signals: tuple[signal.Signals, ...] = WATCHED_SIGNALS) -> None:
        """Prepare; :meth:`install` starts it."""
        self.signals = signals
        self.bits = _mask_bits(signals)
        self.previous_mask: set[int] = set()
        self.main_ident = threading.main_thread().ident or 0
        self.main_native = threading.get_native_id()
        self.pid = os.getpid()
        self.contexts: list[GuardContext] = []
        self.pending: list[SignalEvent] = []
        self.events: list[SignalEvent] = []
        self.thread: threading.Thread | None = None
        self.waiter_native = 0
        self.installed_at = 0.0
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- install
    def install(self) -> None:
        """Block the signals in this thread and start the waiter thread."""
        self.main_native = threading.get_native_id()
        self.previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        with contextlib.suppress(ValueError, OSError):
            # Wakes the main thread from a blocking call when a Python handler must run.
            if signal.getsignal(signal.SIGURG) in (signal.SIG_DFL, None):
                signal.signal(signal.SIGURG, _wake_noop)
        self.thread = threading.Thread(target=self._run, name="trainguard-signals", daemon=True)
        self.thread.start()
        self.installed_at = time.time()
        os.register_at_fork(after_in_child=self._after_fork_child)
        sys.addaudithook(self._audit)

    def _after_fork_child(self) -> None:
        """A forked child has no watcher thread: give it its signals back."""
        with contextlib.suppress(OSError, ValueError):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._ours())

    def _ours(self) -> set[int]:
        return {s for s in self.signals if s not in self.previous_mask}

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        """Keep exec'd children from inheriting the blocked mask."""
        if event == "subprocess.Popen":
            if os.getpid() != self.pid or sys.getprofile() is not None:
                return
            ours = self._ours()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, ours)
            sys.setprofile(_Reblock(ours))
        elif event == "os.exec":
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, self._ours())

    # ------------------------------------------------------------------ state
    def attach(self, ctx: GuardContext) -> None:
        """Send findings to ``ctx`` (and the ones taken before it attached)."""
        with self._lock:
            if all(c is not ctx for c in self.contexts):
                self.contexts.append(ctx)
            backlog, self.pending = self.pending, []
        for event in backlog:
            self._report(ctx, event)

    def detach(self, ctx: GuardContext) -> None:
        """Stop sending findings to ``ctx``; the watcher keeps forwarding signals."""
        with self._lock:
            self.contexts = [c for c in self.contexts if c is not ctx]

    def alive(self) -> bool:
        """True when the waiter thread runs."""
        return self.thread is not None and self.thread.is_alive()

    def main_masked(self) -> bool:
        """True when the main thread still blocks every watched signal."""
        mask = blocked_mask(self.main_native)
        return mask is not None and mask & self.bits == self.bits

    def unmasked_threads(self) -> list[dict[str, Any]]:
        """Threads that do not block the watched signals (the kernel may pick them)."""
        return [
            {"tid": tid, "name": name}
            for tid, (name, bits) in thread_masks().items()
            if bits & self.bits != self.bits and tid != self.waiter_native
        ]

    # ----------------------------------------------------------------- waiter
    def _run(self) -> None:
        self.waiter_native = threading.get_native_id()
        while True:
            try:
                info = signal.sigwaitinfo(self.signals)
            except InterruptedError:
                continue
            except Exception:  # must never die silently: the heartbeat would report it
                _logger.exception("signal watcher failed")
                time.sleep(0.1)
                continue
            try:
                self._handle(info)
            except Exception:  # the delivery below must happen even if recording failed
                _logger.exception("recording signal %s failed", info.si_signo)
                self._deliver(info.si_signo)

    def _handle(self, info: Any) -> None:
        signum = int(info.si_signo)
        sender = describe_process(int(info.si_pid))
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN:
            action = "ignored (SIG_IGN)"
        elif handler in (signal.SIG_DFL, None):
            action = "default action (process terminates)"
        else:
            action = f"Python handler {getattr(handler, '__qualname__', repr(handler))}"
        event = SignalEvent(
            signum=signum,
            name=signal.Signals(signum).name,
            sender_pid=int(info.si_pid),
            sender_uid=int(info.si_uid),
            code=int(info.si_code),
            sender=sender,
            when=time.time(),
            action=action,
            self_sent=int(info.si_pid) == os.getpid(),
        )
        with self._lock:
            self.events.append(event)
            targets = list(self.contexts)
            if not targets and len(self.pending) < 64:
                self.pending.append(event)
        if not targets:
            _logger.warning("%s", event.message(-1))
        for ctx in targets:
            self._report(ctx, event)
        self._deliver(signum)

    def _report(self, ctx: GuardContext, event: SignalEvent) -> None:
        actor = {
            "pid": event.sender_pid,
            "uid": event.sender_uid,
            "user": event.sender.get("user"),
            "cmdline": event.sender.get("cmdline"),
            "host": None,
        }
        finding = make_finding(
            ctx,
            "process.signal",
            event.message(ctx.rank),
            severity=FINDING_KINDS["process.signal"].severity,
            evidence={
                "signal": event.name,
                "signum": event.signum,
                "si_code": _SI_CODES.get(event.code, str(event.code)),
                "sender": event.sender,
                "self_sent": event.self_sent,
                "action": event.action,
                "receiver_pid": os.getpid(),
            },
            actor=actor,
        )
        ctx.report(finding.replace(time=event.when))

    def _deliver(self, signum: int) -> None:
        """Give the signal its normal effect (see the module docstring)."""
        handler = signal.getsignal(signum)
        if handler is signal.SIG_IGN:
            return
        if handler in (signal.SIG_DFL, None):
            self._flush()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
            signal.pthread_kill(threading.get_ident(), signum)
            time.sleep(5.0)  # the default action ends the process before this returns
            return
        _thread.interrupt_main(signal.Signals(signum))
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            if signal.getsignal(signal.SIGURG) is _wake_noop:
                signal.pthread_kill(self.main_ident, signal.SIGURG)

    def _flush(self) -> None:
        with self._lock:
            targets = list(self.contexts)
        for ctx in targets:
            flush = getattr(ctx.sink, "flush", None)
            if callable(flush):
                with contextlib.suppress(Exception):
                    flush()


def _wake_noop(signum: int, frame: FrameType | None) -> None:
    """SIGURG handler: only interrupts a blocking call so pending handlers run."""


class _Reblock:
    """One-shot profile function: block the signals again once fork/exec returned."""

    def __init__(self, signals: set[int]) -> None:
        self.signals = signals
        self.done = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.done:
            return
        name = getattr(arg, "__name__", "") if event in ("c_return", "c_exception") else ""
        leaving = event == "return" and frame.f_code.co_name == "_execute_child"
        if name in ("fork_exec", "posix_spawn", "posix_spawnp") or leaving:
            self.done = True
            signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
            sys.setprofile(None)


_WATCHER: list[SignalWatcher] = []
_LOCK = threading.Lock()


def install_signal_watcher() -> SignalWatcher | None:
    """Start the process's signal watcher once (main thread only); None off the main thread.

    Returns:
        The watcher (the existing one when already installed in this process).
    """
    with _LOCK:
        for watcher in _WATCHER:
            if watcher.pid == os.getpid():
                return watcher
        if threading.current_thread() is not threading.main_thread():
            _logger.warning("signal watcher not installed: call watch() from the main thread")
            return None
        watcher = SignalWatcher()
        watcher.install()
        _WATCHER[:] = [watcher]
        return watcher


def current_watcher() -> SignalWatcher | None:
    """The watcher of this process, if installed."""
    for watcher in _WATCHER:
        if watcher.pid == os.getpid():
            return watcher
    return None


class SignalMonitor:
    """Attaches the guard to the process's signal watcher."""

    name = "signals"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.watcher: SignalWatcher | None = None

    def start(self, ctx: GuardContext) -> None:
        """Install the watcher (if not yet), attach, and record its coverage."""
        self.watcher = install_signal_watcher()
        if self.watcher is None:
            ctx.sink.record("signals.coverage", {"installed": False, "reason": "not main thread"})
            return
        self.watcher.attach(ctx)
        unmasked = self.watcher.unmasked_threads()
        if unmasked:
            _logger.warning(
                "rank %d: %d thread(s) started before the signal watcher do not block "
                "SIGTERM/SIGINT; call trainguard.guard.hooks.install_early() first",
                ctx.rank,
                len(unmasked),
            )
        ctx.sink.record(
            "signals.coverage",
            {
                "installed": True,
                "unmasked_threads": unmasked,
                "signals": [s.name for s in self.watcher.signals],
            },
        )

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing per step."""

    def after_step(self, ctx: GuardContext) -> None:
        """Nothing per step."""

    def integrity(self, ctx: GuardContext) -> dict[str, bool]:
        """Bits for the heartbeat: waiter alive, main thread still masked."""
        watcher = self.watcher
        if watcher is None:
            return {}
        return {"signal_thread": watcher.alive(), "signal_mask": watcher.main_masked()}

    def close(self, ctx: GuardContext) -> None:
        """Detach; the watcher keeps forwarding signals for the process lifetime."""
        if self.watcher is not None:
            self.watcher.detach(ctx)


__all__ = [
    "WATCHED_SIGNALS",
    "SignalMonitor",
    "SignalWatcher",
    "current_watcher",
    "describe_process",
    "install_signal_watcher",
    "thread_masks",
]
