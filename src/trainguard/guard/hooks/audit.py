"""``load.unsafe_global``: a PEP 578 audit hook that blocks unsafe unpickling in-process.

CPython raises the audit event ``pickle.find_class(module, name)`` in both the pure
Python and the C unpickler *before* the global is imported or resolved. The hook
installed here classifies ``module.name`` with the scanner's allowlist policy
(:class:`trainguard.scan.policy.Policy`) and raises :class:`UnsafeGlobalBlocked` for
anything that is not allowlisted: the unpickler stops before the callable exists, so
the payload never runs. This covers ``torch.load(weights_only=False)``,
``pickle.load``/``loads``, ``joblib`` and every other loader built on ``pickle``,
anywhere in the process. (``torch.load(weights_only=True)`` resolves globals with its
own allowlist and raises no such event.) Each block is a ``load.unsafe_global``
finding naming the global, the file (the last data file this thread opened, from
``open`` audit events) and the calling ``file:line``.

Why it cannot be switched off from Python:

- Audit hooks cannot be removed (``sys.addaudithook`` has no inverse).
- There is no "enabled" flag. Enforcement depends only on values captured in the
  hook's closure at install time (a private policy instance and bound methods); the
  module holds no reference to the hook or its state. The guard talks to the hook
  through audit events of its own (``trainguard.audit.attach``/``detach``/``query``),
  so an attacker can at most detach the guard's ledger sink, which the heartbeat's
  integrity check sees (``guard.disabled``). Blocking goes on regardless.
- The allowlist is fixed when the hook is installed (``install_audit_hook(allow=...)``
  or ``TRAINGUARD_AUDIT_ALLOW``); later calls cannot widen it.
- Attempts to add another audit hook (``sys.addaudithook`` event) or to look up the
  C API that clears hooks through ``ctypes`` are reported as ``guard.disabled``.

Limits (PEP 578 is "not a sandbox"): code that already runs in the process can
edit memory through ``ctypes``, walk the garbage collector to the hook's closure,
or unpickle with a custom ``find_class`` that never calls the base class. The first
two are reported when they go through audited APIs; the third leaves the ``import``
event only. Unpickling inside multiprocessing pipes and queues (DataLoader worker
results, which carry ``torch.multiprocessing`` rebuild functions) is data from the
job's own processes, which run the same hook: there only known-dangerous globals
outside the IPC rebuild set are blocked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from trainguard.core.errors import UnsafeFileError
from trainguard.core.findings import FINDING_KINDS, Severity, Verdict
from trainguard.guard.base import GuardContext
from trainguard.guard.findingutil import make_finding, this_process

_logger = logging.getLogger(__name__)

EVENT_ATTACH = "trainguard.audit.attach"
"""Audit event: ``(ctx,)`` attaches a guard context; findings go to its sink."""
EVENT_DETACH = "trainguard.audit.detach"
"""Audit event: ``(ctx,)`` detaches it (the guard closed)."""
EVENT_QUERY = "trainguard.audit.query"
"""Audit event: ``(box,)``; the hook appends its status dict to the list ``box``."""

ALLOW_ENV = "TRAINGUARD_AUDIT_ALLOW"
"""Comma-separated extra ``module.name`` globals allowed by the hook (read at install)."""

IPC_GLOBALS = frozenset(
    {
        "torch.multiprocessing.reductions.rebuild_tensor",
        "torch.multiprocessing.reductions.rebuild_cuda_tensor",
        "torch.multiprocessing.reductions.rebuild_storage_fd",
        "torch.multiprocessing.reductions.rebuild_storage_filename",
        "torch.multiprocessing.reductions.rebuild_storage_empty",
        "torch.multiprocessing.reductions.rebuild_typed_storage",
        "torch.multiprocessing.reductions.rebuild_typed_storage_child",
        "torch.multiprocessing.reductions.rebuild_untyped_storage",
        "torch.multiprocessing.reductions.rebuild_nested_tensor",
        "torch.multiprocessing.reductions.rebuild_sparse_coo_tensor",
        "torch.multiprocessing.reductions.rebuild_sparse_compressed_tensor",
        "torch.multiprocessing.reductions.rebuild_event",
        "torch.multiprocessing.reductions.rebuild_meta_tensor",
        "multiprocessing.resource_sharer.DupFd",
        "multiprocessing.reduction.rebuild_connection",
        "multiprocessing.reduction._rebuild_socket",
        "multiprocessing.connection.rebuild_connection",
        "torch._utils.ExceptionWrapper",
        "torch.storage.UntypedStorage",
        "torch.storage.TypedStorage",
    }
)
"""Globals that torch's DataLoader worker queues and multiprocessing pipes carry.

Allowed only while the unpickler is called from multiprocessing's own queue or
connection code (data produced by the job's own worker processes)."""

_NOT_DATA_SUFFIXES = (".py", ".pyc", ".pyi", ".so", ".pth", ".pyd")
_WATCHED = frozenset(
    {
        "pickle.find_class",
        "open",
        "sys.addaudithook",
        "ctypes.dlsym",
        EVENT_ATTACH,
        EVENT_DETACH,
        EVENT_QUERY,
    }
)


class UnsafeGlobalBlocked(UnsafeFileError, pickle.UnpicklingError):
    """Raised inside the unpickler: a non-allowlisted global was refused."""


def _dir_of(module: Any) -> str | None:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return None
    return str(Path(path).resolve().parent) + os.sep


def _library_dirs() -> tuple[str, ...]:
    """Directories whose frames are never "the caller" (loaders, not users)."""
    import trainguard

    dirs = {os.path.realpath(p) + os.sep for p in _stdlib_paths()}
    own = _dir_of(trainguard)
    if own:
        dirs.add(own)
    torch = sys.modules.get("torch")
    if torch is not None:
        tdir = _dir_of(torch)
        if tdir:
            dirs.add(tdir)
    return tuple(sorted(dirs))


def _stdlib_paths() -> list[str]:
    paths = sysconfig.get_paths()
    site = {os.path.realpath(paths[k]) for k in ("purelib", "platlib") if k in paths}
    return [
        paths[key]
        for key in ("stdlib", "platstdlib")
        if key in paths and os.path.realpath(paths[key]) not in site
    ]


def user_frame(frame: FrameType | None, skip_dirs: tuple[str, ...]) -> FrameType | None:
    """The first frame outside ``skip_dirs`` (the code that asked), else the innermost."""
    innermost = frame
    depth = 0
    while frame is not None and depth < 64:
        filename = frame.f_code.co_filename
        real = os.path.realpath(filename) if filename.startswith(os.sep) else filename
        if not filename.startswith("<frozen") and not real.startswith(skip_dirs):
            return frame
        frame = frame.f_back
        depth += 1
    return innermost


def caller_location(frame: FrameType | None, skip_dirs: tuple[str, ...]) -> str | None:
    """``file:line`` of :func:`user_frame`."""
    found = user_frame(frame, skip_dirs)
    return f"{found.f_code.co_filename}:{found.f_lineno}" if found is not None else None


def _ipc_context(frame: FrameType | None, mp_dirs: tuple[str, ...]) -> bool:
    """True when the innermost Python frame is multiprocessing's queue/pipe code."""
    if frame is None:
        return False
    filename = frame.f_code.co_filename
    real = os.path.realpath(filename) if filename.startswith(os.sep) else filename
    return real.startswith(mp_dirs)


@dataclasses.dataclass
class _Pending:
    kind: str
    message: str
    severity: Severity
    location: str | None
    path: str | None
    global_name: str | None
    evidence: dict[str, Any]
    when: float


def _attributed_file(
    opened: tuple[str, int, int, Any] | None, asker: FrameType | None
) -> tuple[str | None, str | None]:
    """``(file, recently_opened)``: the file being unpickled when the same statement of
    the same frame opened it (``torch.load(path)``, ``pickle.load(open(p))``); a file
    the same frame opened earlier is evidence only (``with open(p) as f: ...``)."""
    if opened is None or asker is None:
        return None, None
    path, frame_id, line, code = opened
    if frame_id != id(asker) or code is not asker.f_code:
        return None, None
    if line == asker.f_lineno:
        return path, None
    return None, path


def _make_hook(policy: Any, allow: tuple[str, ...]) -> Callable[[str, tuple[Any, ...]], None]:
    """Build the hook; everything it enforces with lives in this closure."""
    classify = policy.classify
    malicious = Verdict.MALICIOUS
    safe = Verdict.SAFE
    blocked_error = UnsafeGlobalBlocked
    ipc_globals = IPC_GLOBALS
    watched = _WATCHED
    getframe = sys._getframe
    get_ident = threading.get_ident
    install_pid = os.getpid()
    installed_at = time.time()
    skip_box = [_library_dirs(), "torch" in sys.modules]

    def skip() -> tuple[str, ...]:
        if not skip_box[1] and "torch" in sys.modules:
            skip_box[0] = _library_dirs()
            skip_box[1] = True
        return skip_box[0]  # type: ignore[return-value]

    import trainguard

    own_dir = _dir_of(trainguard)
    import multiprocessing

    mp_dir = _dir_of(multiprocessing)
    mp_dirs = (mp_dir,) if mp_dir else ("\0",)
    contexts: list[GuardContext] = []
    pending: list[_Pending] = []
    last_open: dict[int, tuple[str, int, int, Any]] = {}
    counters = {"blocked": 0, "ipc_allowed": 0, "hooks_added_after": 0, "detached": 0}
    local = threading.local()
    lock = threading.RLock()

    def deliver(item: _Pending) -> None:
        """Write ``item`` to every attached guard, or keep it until one attaches."""
        if os.getpid() != install_pid:
            # A forked child (DataLoader worker) shares the parent's ledger handle;
            # writing through it from here would corrupt it. Log only.
            _logger.error("%s (in forked child %d): %s", item.kind, os.getpid(), item.message)
            return
        with lock:
            targets = list(contexts)
            if not targets:
                if len(pending) < 256:
                    pending.append(item)
                _logger.error("%s: %s", item.kind, item.message)
                return
        for ctx in targets:
            _report(ctx, item)

    def _report(ctx: GuardContext, item: _Pending) -> None:
        if getattr(local, "busy", False):  # the sink's own I/O raised an event
            return
        local.busy = True
        try:
            finding = make_finding(
                ctx,
                item.kind,
                item.message,
                severity=item.severity,
                location=item.location,
                evidence=item.evidence,
                actor=this_process(),
            )
            finding = finding.replace(path=item.path, global_name=item.global_name, time=item.when)
            ctx.report(finding)
        except Exception:  # a reporting failure must never unblock the load
            _logger.exception("could not report %s", item.kind)
        finally:
            local.busy = False

    def on_find_class(args: tuple[Any, ...]) -> None:
        module, name = str(args[0]), str(args[1])
        verdict = classify(module, name)
        if verdict.verdict == safe:
            return
        qualified = f"{module}.{name}"
        frame = getframe(2)
        if _ipc_context(frame, mp_dirs) and (
            qualified in ipc_globals or verdict.verdict != malicious
        ):
            counters["ipc_allowed"] += 1
            return
        counters["blocked"] += 1
        asker = user_frame(frame, skip())
        location = f"{asker.f_code.co_filename}:{asker.f_lineno}" if asker is not None else None
        path, recent = _attributed_file(last_open.get(get_ident()), asker)
        where = f" while loading {path}" if path else ""
        message = (
            f"Blocked unpickling of {verdict.verdict.value} global {qualified}{where} "
            f"(called from {location}): {verdict.reason}."
        )
        deliver(
            _Pending(
                "load.unsafe_global",
                message,
                FINDING_KINDS["load.unsafe_global"].severity,
                location,
                path,
                qualified,
                {
                    "global": qualified,
                    "verdict": verdict.verdict.value,
                    "reason": verdict.reason,
                    "file": path,
                    "recently_opened": recent,
                    "caller": location,
                    "thread": threading.current_thread().name,
                    "blocked": True,
                },
                time.time(),
            )
        )
        raise blocked_error(
            f"{path or 'pickle data'}: trainguard blocked the non-allowlisted global "
            f"{qualified} before it ran ({verdict.reason}); scan the file with "
            "`trainguard scan` and load weights with trainguard.safe_load"
        )

    def on_open(args: tuple[Any, ...]) -> None:
        target = args[0] if args else None
        if isinstance(target, bytes):
            target = target.decode("utf-8", "replace")
        elif not isinstance(target, str):
            if target is None or isinstance(target, int):
                return
            try:
                target = os.fspath(target)
            except TypeError:
                return
            if isinstance(target, bytes):
                target = target.decode("utf-8", "replace")
        if target.endswith(_NOT_DATA_SUFFIXES):
            return
        mode = args[1] if len(args) > 1 else None
        if isinstance(mode, str) and ("w" in mode or "a" in mode or "x" in mode):
            return
        if len(last_open) > 4096:
            last_open.clear()
        asker = user_frame(getframe(2), skip())
        if asker is None:
            return
        full = target if target.startswith(os.sep) else str(Path.cwd() / target)
        last_open[get_ident()] = (full, id(asker), asker.f_lineno, asker.f_code)

    def on_tamper(event: str, args: tuple[Any, ...]) -> None:
        location = caller_location(getframe(2), skip())
        if event == "sys.addaudithook":
            counters["hooks_added_after"] += 1
            frame = getframe(2)
            own = frame.f_code.co_filename if frame is not None else ""
            if own_dir and os.path.realpath(own).startswith(own_dir):
                return
            deliver(
                _Pending(
                    "guard.disabled",
                    f"Another audit hook was added after trainguard's at {location}; it "
                    "cannot remove ours, but someone is instrumenting the interpreter.",
                    Severity.MEDIUM,
                    location,
                    None,
                    None,
                    {"event": event, "caller": location},
                    time.time(),
                )
            )
            return
        symbol = args[1] if len(args) > 1 else None
        if isinstance(symbol, str) and ("AuditHook" in symbol or "ClearAudit" in symbol):
            deliver(
                _Pending(
                    "guard.disabled",
                    f"ctypes looked up the interpreter's audit-hook API ({symbol}) at "
                    f"{location}: an attempt to tamper with trainguard's audit hook.",
                    Severity.HIGH,
                    location,
                    None,
                    None,
                    {"event": event, "symbol": symbol, "caller": location},
                    time.time(),
                )
            )

    def on_control(event: str, args: tuple[Any, ...]) -> None:
        if not args:
            return
        target = args[0]
        if event == EVENT_QUERY:
            if isinstance(target, list):
                with lock:
                    target.append(
                        {
                            "installed": True,
                            "pid": install_pid,
                            "installed_at": installed_at,
                            "contexts": [id(c) for c in contexts],
                            "allow": allow,
                            "pending": len(pending),
                            **counters,
                        }
                    )
            return
        if not isinstance(target, GuardContext):
            return
        if event == EVENT_ATTACH:
            with lock:
                if all(c is not target for c in contexts):
                    contexts.append(target)
                backlog = list(pending)
                pending.clear()
            for item in backlog:
                _report(target, item)
        else:
            with lock:
                before = len(contexts)
                contexts[:] = [c for c in contexts if c is not target]
                if len(contexts) != before:
                    counters["detached"] += 1

    def trainguard_audit_hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in watched:
            return
        if event == "open":
            on_open(args)
        elif event == "pickle.find_class":
            on_find_class(args)
        elif event in (EVENT_ATTACH, EVENT_DETACH, EVENT_QUERY):
            on_control(event, args)
        else:
            on_tamper(event, args)

    return trainguard_audit_hook


_INSTALL_LOCK = threading.Lock()


def audit_status() -> dict[str, Any] | None:
    """The installed hook's status (None when no trainguard hook answers)."""
    box: list[dict[str, Any]] = []
    sys.audit(EVENT_QUERY, box)
    return box[0] if box else None


def _env_allow() -> tuple[str, ...]:
    raw = os.environ.get(ALLOW_ENV, "")
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def install_audit_hook(allow: Iterable[str] = ()) -> bool:
    """Install the blocking audit hook once per process; True when this call installed it.

    Call it as early as possible (first lines of the entry script) so that nothing
    is unpickled before it; :func:`trainguard.watch` calls it too.

    Args:
        allow: extra exact ``module.name`` globals to allow (plus ``TRAINGUARD_AUDIT_ALLOW``).
            Known-dangerous callables can never be allowed. Ignored (and logged) when
            the hook is already installed: the allowlist cannot be widened later.

    Raises:
        UsageError: an ``allow`` entry is malformed or names a dangerous callable.
    """
    from trainguard.scan.policy import Policy

    wanted = tuple(dict.fromkeys((*allow, *_env_allow())))
    with _INSTALL_LOCK:
        status = audit_status()
        if status is not None:
            extra = set(wanted) - set(status.get("allow", ()))
            if extra:
                _logger.warning(
                    "audit hook already installed; cannot widen its allowlist with %s",
                    ", ".join(sorted(extra)),
                )
            return False
        policy = Policy.default(extra_allow=wanted)
        hook = _make_hook(policy, wanted)
        sys.addaudithook(hook)
        _logger.info("trainguard audit hook installed (pid %d)", os.getpid())
        return True


def attached(ctx: GuardContext) -> bool:
    """True when the hook is installed and reports to ``ctx``."""
    status = audit_status()
    return status is not None and id(ctx) in status.get("contexts", ())


class AuditMonitor:
    """Installs the audit hook (if not yet) and routes its findings to the guard."""

    name = "audit"

    def __init__(self) -> None:
        """Create an idle monitor; :meth:`start` attaches it."""
        self.installed_here = False
        self.ctx: GuardContext | None = None
        self.closed = False

    def start(self, ctx: GuardContext) -> None:
        """Install the hook and attach this guard's sink (pending findings follow)."""
        allow = ctx.settings.get("audit.allow", ())
        if isinstance(allow, str):
            allow = tuple(a for a in allow.split(",") if a)
        self.installed_here = install_audit_hook(allow=tuple(allow))
        self.ctx = ctx
        sys.audit(EVENT_ATTACH, ctx)
        status = audit_status() or {}
        ctx.sink.record(
            "audit.hook",
            {"installed_by_watch": self.installed_here, "allow": list(status.get("allow", ()))},
        )

    def before_step(self, ctx: GuardContext) -> None:
        """Nothing per step: the hook works on its own."""

    def after_step(self, ctx: GuardContext) -> None:
        """Nothing per step: the hook works on its own."""

    def integrity(self, ctx: GuardContext) -> dict[str, bool]:
        """Bits for the heartbeat: hook installed, this guard attached."""
        status = audit_status()
        return {
            "audit_installed": status is not None,
            "audit_attached": status is not None and id(ctx) in status.get("contexts", ()),
        }

    def close(self, ctx: GuardContext) -> None:
        """Detach this guard's sink; the hook itself keeps blocking."""
        self.closed = True
        sys.audit(EVENT_DETACH, ctx)


def summarize(status: Mapping[str, Any] | None) -> str:
    """One line describing the hook's status (for logs and docs)."""
    if status is None:
        return "audit hook: not installed"
    return (
        f"audit hook: installed in pid {status['pid']}, {status['blocked']} blocked, "
        f"{len(status['contexts'])} guard(s) attached"
    )


__all__ = [
    "ALLOW_ENV",
    "EVENT_ATTACH",
    "EVENT_DETACH",
    "EVENT_QUERY",
    "IPC_GLOBALS",
    "AuditMonitor",
    "UnsafeGlobalBlocked",
    "attached",
    "audit_status",
    "caller_location",
    "install_audit_hook",
    "summarize",
]
