"""``lint.process-kill``: training code that kills processes or exits on some ranks.

The incident "randomly killed multi-machine processes". Training code has no
business sending signals to other processes; a launcher does, and a launcher
does not pick its victim by rank or by chance.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo, describe
from trainguard.lint.flow import Kinds
from trainguard.lint.shell import command_text, programs
from trainguard.lint.sources import Source

_SIGNAL_CALLS = frozenset({"os.kill", "os.killpg", "signal.pthread_kill", "signal.raise_signal"})
_TIMER_CALLS = frozenset({"signal.alarm", "signal.setitimer"})
_EXIT_CALLS = frozenset({"sys.exit", "exit", "quit", "os._exit", "os.abort"})
_EXIT_EXCEPTIONS = frozenset({"SystemExit", "KeyboardInterrupt"})
_KILL_METHODS = frozenset({"kill", "terminate", "send_signal", "suspend"})
_KILL_PROGRAMS = frozenset(
    {"kill", "pkill", "killall", "skill", "scancel", "qdel", "bkill", "xkill", "killall5"}
)
_TARGETED = frozenset(
    {Source.RANK, Source.RANDOM, Source.WORLD_SIZE, Source.HOST, Source.TIMEBOMB, Source.STEP}
)
_EXIT_TARGETED = frozenset({Source.RANK, Source.RANDOM, Source.HOST, Source.TIMEBOMB})

INFO = RuleInfo(
    id="lint.process-kill",
    title="process kill",
    catches=(
        "os.kill/killpg, signal.raise_signal/pthread_kill, psutil Process.kill/terminate/"
        "send_signal, subprocess or os.system running kill/pkill/killall/scancel; "
        "Popen.kill/terminate, signal.alarm and sys.exit/os._exit/raise SystemExit when "
        "they depend on rank, randomness, host, step or world size"
    ),
    rationale=(
        "The incident randomly killed processes of multi-machine jobs; a kill keyed on "
        "rank or chance looks like flaky hardware and wastes the whole job."
    ),
    fix=(
        "Let the launcher (torchrun, SLURM) own process lifetimes; exit with an error "
        "on every rank on a real failure; never choose a victim by rank or random draw."
    ),
    severity="medium-critical",
)


def _conditions(ctx: FileContext, node: ast.AST) -> tuple[Kinds, tuple[ast.AST, ...]]:
    kinds: Kinds = frozenset()
    related: list[ast.AST] = []
    for condition in ctx.flow.conditions(node):
        if condition.kinds & _TARGETED:
            kinds |= condition.kinds & _TARGETED
            related.append(condition.test)
    return kinds, tuple(related)


def _is_psutil(ctx: FileContext, node: ast.AST, depth: int = 0) -> bool:
    """A psutil.Process (or process_iter item) receiver, through one level of variables."""
    if depth > 3:
        return False
    if isinstance(node, ast.Call):
        qualname = ctx.resolve(node.func)
        return qualname is not None and qualname.startswith("psutil.")
    if isinstance(node, ast.Name):
        scope = ctx.flow.scope_of(node)
        if any(_is_psutil(ctx, v, depth + 1) for v in ctx.flow.values_of(node.id, scope)):
            return True
        for loop in ctx.flow.nodes:
            if (
                isinstance(loop, ast.For)
                and isinstance(loop.target, ast.Name)
                and loop.target.id == node.id
                and _is_psutil(ctx, loop.iter, depth + 1)
            ):
                return True
    return False


def _signal_zero(call: ast.Call) -> bool:
    """``os.kill(pid, 0)`` only probes whether the process exists."""
    return (
        len(call.args) >= 2 and isinstance(call.args[1], ast.Constant) and call.args[1].value == 0
    )


def _arg_kinds(ctx: FileContext, call: ast.Call) -> Kinds:
    kinds: Kinds = frozenset()
    for arg in call.args:
        kinds |= ctx.flow.taint(arg)
    return kinds & {Source.RANDOM, Source.RANK}


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield kills and targeted exits."""
    for call in ctx.calls():
        yield from _check_call(ctx, call)
    for node in ctx.flow.nodes:
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if ctx.resolve(target) in _EXIT_EXCEPTIONS:
                yield from _targeted_exit(ctx, node, f"raise {ctx.resolve(target)}")


def _check_call(ctx: FileContext, call: ast.Call) -> Iterator[Hit]:
    qualname = ctx.resolve(call.func)
    conditions, related = _conditions(ctx, call)
    if qualname in _SIGNAL_CALLS:
        if qualname in ("os.kill", "os.killpg") and _signal_zero(call):
            return
        kinds = conditions | _arg_kinds(ctx, call)
        if kinds:
            yield Hit(
                call,
                Severity.CRITICAL,
                f"{qualname} sends a signal depending on {describe(kinds)}",
                kinds,
                related,
            )
        else:
            yield Hit(call, Severity.MEDIUM, f"{qualname} sends a signal from training code")
        return
    text = command_text(ctx, call)
    if text is not None:
        killers = programs(text) & _KILL_PROGRAMS
        if killers:
            program = sorted(killers)[0]
            severity = Severity.CRITICAL if conditions else Severity.HIGH
            suffix = f" depending on {describe(conditions)}" if conditions else ""
            yield Hit(
                call, severity, f"runs `{program}` in a subprocess{suffix}", conditions, related
            )
        return
    method = call.func.attr if isinstance(call.func, ast.Attribute) else ""
    if method in _KILL_METHODS and qualname not in _SIGNAL_CALLS:
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else call.func
        if _is_psutil(ctx, receiver):
            severity = Severity.CRITICAL if conditions else Severity.HIGH
            suffix = f" depending on {describe(conditions)}" if conditions else ""
            message = f"psutil process .{method}() from training code{suffix}"
            yield Hit(call, severity, message, conditions, related)
        elif conditions:
            yield Hit(
                call,
                Severity.HIGH,
                f".{method}() of a process depending on {describe(conditions)}",
                conditions,
                related,
            )
        return
    if qualname in _TIMER_CALLS and conditions:
        yield Hit(
            call,
            Severity.HIGH,
            f"{qualname} arms a killing timer depending on {describe(conditions)}",
            conditions,
            related,
        )
        return
    if qualname in _EXIT_CALLS:
        yield from _targeted_exit(ctx, call, str(qualname))


def _targeted_exit(ctx: FileContext, node: ast.AST, name: str) -> Iterator[Hit]:
    kinds: Kinds = frozenset()
    related: list[ast.AST] = []
    for condition in ctx.flow.conditions(node):
        if condition.kinds & _EXIT_TARGETED:
            kinds |= condition.kinds & _EXIT_TARGETED
            related.append(condition.test)
    if not kinds:
        return
    severity = Severity.CRITICAL if Source.RANDOM in kinds else Severity.HIGH
    yield Hit(
        node,
        severity,
        f"{name} stops this process depending on {describe(kinds)}",
        kinds,
        tuple(related),
    )


RULE = Rule(info=INFO, check=check)
