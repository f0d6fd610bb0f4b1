"""Small helpers every monitor uses to build findings and name code locations."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from trainguard.core.findings import FINDING_KINDS, Finding, Severity
from trainguard.guard.base import GuardContext


def make_finding(
    ctx: GuardContext,
    kind: str,
    message: str,
    *,
    rank: int | None = -1,
    severity: Severity | None = None,
    location: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    actor: Mapping[str, Any] | None = None,
) -> Finding:
    """A finding of a documented runtime ``kind`` made by this rank at this step.

    Args:
        ctx: the guard context (rank, step).
        kind: a key of :data:`FINDING_KINDS`.
        message: one sentence naming the rank / location.
        rank: the rank the finding is about; ``-1`` means this rank, None means unknown.
        severity: override of the kind's default severity.
        location: ``file:line`` responsible, where known.
        evidence: JSON-serialisable measurements.
        actor: process responsible (defaults to this process when ``rank`` is this rank).
    """
    row = FINDING_KINDS[kind]
    about = ctx.rank if rank == -1 else rank
    ev = dict(evidence or {})
    ev.setdefault("observed_by_rank", ctx.rank)
    ev.setdefault("world_size", ctx.world_size)
    return Finding(
        rule=kind,
        severity=severity or row.severity,
        message=message,
        rank=about,
        step=ctx.step,
        time=time.time(),
        location=location,
        actor=actor if actor is not None else (this_process() if about == ctx.rank else None),
        evidence=ev,
    )


def this_process() -> dict[str, Any]:
    """Actor record of the current process."""
    return {
        "pid": os.getpid(),
        "uid": os.getuid() if hasattr(os, "getuid") else None,
        "user": os.environ.get("USER") or os.environ.get("USERNAME"),
        "cmdline": " ".join(sys.argv)[:500],
        "host": socket.gethostname(),
    }


def code_location(obj: Any) -> dict[str, Any]:
    """Where a callable was defined: file, first line, module, qualified name.

    Reads attributes only; never calls ``obj``. Works for functions, bound methods,
    ``functools.partial`` and callable instances (their class's ``__call__``).
    """
    target = obj
    for _ in range(4):
        func = getattr(target, "__func__", None)
        if func is not None:
            target = func
            continue
        inner = getattr(target, "func", None)  # functools.partial
        if inner is not None and callable(inner) and not hasattr(target, "__code__"):
            target = inner
            continue
        break
    code = getattr(target, "__code__", None)
    if code is None and not isinstance(target, type):
        call = vars(type(target)).get("__call__")
        code = getattr(call, "__code__", None)
    info: dict[str, Any] = {
        "module": getattr(target, "__module__", None),
        "qualname": getattr(target, "__qualname__", None) or type(target).__qualname__,
        "file": None,
        "line": None,
        "type": type(obj).__name__,
    }
    if code is not None:
        info["file"] = code.co_filename
        info["line"] = code.co_firstlineno
    return info


def format_location(info: Mapping[str, Any]) -> str | None:
    """``file:line`` from :func:`code_location` output (None when unknown)."""
    if info.get("file") is None:
        return None
    return f"{info['file']}:{info['line']}"


def check_failed(ctx: GuardContext, monitor: str, where: str, exc: BaseException) -> Finding:
    """``guard.disabled`` (high) for a check that raised: its verdicts stop from here on.

    A check that fails is a check that is off. An exception is also something code in
    the job can provoke on purpose (odd optimizer state, a parameter of an unexpected
    type), so it is reported, not only logged; the caller reports it once per check.
    """
    return make_finding(
        ctx,
        "guard.disabled",
        f"Rank {ctx.rank}: the guard's {monitor} check failed in {where} at step {ctx.step} "
        f"({type(exc).__name__}: {str(exc)[:200]}); it may not see what it should from here on.",
        severity=Severity.HIGH,
        evidence={"monitor": monitor, "where": where, "error": f"{type(exc).__name__}: {exc}"},
    )
