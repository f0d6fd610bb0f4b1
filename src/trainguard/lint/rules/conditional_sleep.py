"""``lint.conditional-sleep``: delays that fire only at scale, on some ranks or hosts.

The incident's sleeps were inserted only into jobs over 256 GPUs, so every small
debugging run was fast and every large run was slow. A sleep is normal in a retry
loop; a sleep (or wait, or busy loop) whose *execution* or *duration* depends on
the world size, the host name, a random draw, the rank or the environment is not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.aliases import last_part
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo, describe
from trainguard.lint.flow import Kinds
from trainguard.lint.shell import command_text, programs
from trainguard.lint.sources import Source

_SLEEP_CALLS = frozenset(
    {
        "time.sleep",
        "asyncio.sleep",
        "trio.sleep",
        "anyio.sleep",
        "gevent.sleep",
        "eventlet.sleep",
        "torch.cuda._sleep",
        "signal.pause",
        "signal.sigtimedwait",
    }
)
_HIGH = frozenset({Source.WORLD_SIZE, Source.HOST, Source.TIMEBOMB, Source.RANDOM})
_MEDIUM = frozenset({Source.RANK, Source.ENV, Source.STEP})
_DURATION_HIGH = frozenset({Source.WORLD_SIZE, Source.HOST, Source.TIMEBOMB})
_DURATION_LOW = frozenset({Source.RANK, Source.RANDOM})
_TIME_ONLY = frozenset({Source.TIME})

INFO = RuleInfo(
    id="lint.conditional-sleep",
    title="conditional sleep",
    catches=(
        "time.sleep, asyncio.sleep, Event/Condition .wait(timeout), select/poll timeouts, "
        "torch.cuda._sleep, signal.pause, shell `sleep`, and busy-wait loops whose running "
        "or duration depends on world size, host name, a random draw, a fixed date, the "
        "rank, the training step or an environment variable (directly, through local "
        "variables, helper functions, or guard clauses that return early)"
    ),
    rationale=(
        "The incident inserted sleeps only into jobs larger than 256 GPUs: small debug "
        "runs stayed fast, so nobody could reproduce the slowdown. A retry back-off sleeps "
        "whatever the job size; a delay keyed on scale, host or chance is targeted."
    ),
    fix=(
        "Sleep unconditionally in retry loops with a bounded back-off; wait for peers with "
        "dist.barrier() instead of rank-dependent sleeps; never branch delays on job size."
    ),
    severity="low-high",
)


def _sleep_name(ctx: FileContext, call: ast.Call) -> str | None:
    qualname = ctx.resolve(call.func)
    if qualname in _SLEEP_CALLS:
        return qualname
    if qualname == "select.select" and (len(call.args) >= 4 or _has_kw(call, "timeout")):
        return "select.select(timeout)"
    last = last_part(qualname) if qualname else _method(call)
    single_timeout = len(call.args) == 1 and not isinstance(
        call.args[0], ast.List | ast.Tuple | ast.Set | ast.Dict
    )
    if last in ("wait", "poll", "acquire") and (
        (last != "acquire" and single_timeout) or _has_kw(call, "timeout")
    ):
        return f".{last}(timeout)"
    text = command_text(ctx, call)
    if text is not None and programs(text) & {"sleep", "usleep"}:
        return "shell sleep"
    return None


def _is_plain_sleep(ctx: FileContext, call: ast.Call) -> bool:
    """Explicit sleeps only (no waits with timeouts): what a wrapper helper hides."""
    name = _sleep_name(ctx, call)
    return name is not None and (name in _SLEEP_CALLS or name == "shell sleep")


def _method(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else ""


def _has_kw(call: ast.Call, name: str) -> bool:
    return any(keyword.arg == name for keyword in call.keywords)


def _severity(conditions: Kinds, duration: Kinds) -> Severity | None:
    if conditions & _HIGH or duration & _DURATION_HIGH:
        return Severity.HIGH
    if conditions & _MEDIUM:
        return Severity.MEDIUM
    if duration & _DURATION_LOW:
        return Severity.LOW
    return None


def _idle_body(ctx: FileContext, body: list[ast.stmt]) -> bool:
    """A loop body that does no work: ``pass``, constants, counters, clock reads."""
    for statement in body:
        if isinstance(statement, ast.Pass | ast.Continue):
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue
        if isinstance(statement, ast.AugAssign) and isinstance(statement.value, ast.Constant):
            continue
        if (
            isinstance(statement, ast.Assign | ast.Expr)
            and isinstance(statement.value, ast.Call)
            and ctx.flow.taint(statement.value) == _TIME_ONLY
        ):
            continue
        return False
    return True


def _conditions(ctx: FileContext, node: ast.AST) -> tuple[Kinds, tuple[ast.AST, ...]]:
    kinds: Kinds = frozenset()
    related: list[ast.AST] = []
    for condition in ctx.flow.conditions(node):
        interesting = condition.kinds - _TIME_ONLY
        if interesting:
            kinds |= interesting
            related.append(condition.test)
    return kinds, tuple(related)


def _duration(ctx: FileContext, call: ast.Call) -> Kinds:
    kinds: Kinds = frozenset()
    for arg in call.args:
        kinds |= ctx.flow.taint(arg)
    for keyword in call.keywords:
        if keyword.arg in ("timeout", "seconds", "delay", "secs"):
            kinds |= ctx.flow.taint(keyword.value)
    return kinds


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield conditional sleeps, waits and busy loops."""
    for call in ctx.calls():
        name = _sleep_name(ctx, call)
        if name is None:
            continue
        conditions, related = _conditions(ctx, call)
        duration = _duration(ctx, call)
        severity = _severity(conditions, duration)
        if severity is None and name == "torch.cuda._sleep":
            yield Hit(call, Severity.MEDIUM, "torch.cuda._sleep spins the GPU for no work")
            continue
        if severity is None:
            continue
        if conditions:
            message = f"{name} runs only depending on {describe(conditions)}"
        else:
            message = f"{name} lasts a time that depends on {describe(duration)}"
        yield Hit(call, severity, message, conditions | duration, related)
    yield from _busy_loops(ctx)
    yield from _wrapped(ctx)


def _busy_loops(ctx: FileContext) -> Iterator[Hit]:
    for node in ctx.flow.nodes:
        if isinstance(node, ast.While):
            own = ctx.flow.taint(node.test)
            if Source.TIME not in own or not _idle_body(ctx, node.body):
                continue
            own = own - _TIME_ONLY
        elif isinstance(node, ast.For):
            own = ctx.flow.taint(node.iter)
            if not own & (_HIGH | {Source.RANK}) or not _idle_body(ctx, node.body):
                continue
        else:
            continue
        conditions, related = _conditions(ctx, node)
        kinds = own | conditions
        severity = _severity(kinds, frozenset()) or Severity.LOW
        message = (
            f"busy-wait loop burns time depending on {describe(kinds)}"
            if kinds
            else "busy-wait loop burns CPU time without doing work"
        )
        yield Hit(node, severity, message, kinds, related)


def _wrapped(ctx: FileContext) -> Iterator[Hit]:
    """``if ws > 256: slow()`` where ``slow`` (transitively) sleeps."""
    sinks = ctx.flow.sink_functions(lambda call: _is_plain_sleep(ctx, call))
    if not sinks:
        return
    for call in ctx.calls():
        callees = [f for f in ctx.flow.local_callees(call) if f.name in sinks]
        if not callees:
            continue
        conditions, related = _conditions(ctx, call)
        if not conditions:
            continue
        # "if rank == 0: download()" where download() retries with a back-off is
        # ordinary; only scale, host, chance and dates make a wrapped sleep targeted.
        severity = Severity.HIGH if conditions & _HIGH else Severity.LOW
        sink = sinks[callees[0].name]
        yield Hit(
            call,
            severity,
            f"{callees[0].name}() sleeps (line {sink.lineno}) and is called only depending "
            f"on {describe(conditions)}",
            conditions,
            (*related, sink),
        )


RULE = Rule(info=INFO, check=check)
