"""``lint.seed-override``: seeds from time or chance, and reseeding after set-up.

The incident modified the shared code's random seeds, so runs stopped being
reproducible and data order silently changed. A training program seeds each RNG
once, at start-up, from configuration. Seeds taken from the clock, the pid or
another RNG, reseeding inside loops, data-loader workers or ``__getitem__``, and
replacing RNG state mid-run are what tampering looks like.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.aliases import last_part
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo, describe
from trainguard.lint.flow import FunctionNode, Kinds
from trainguard.lint.sources import Source

_SEED_ROOTS = frozenset(
    {
        "torch",
        "numpy",
        "random",
        "transformers",
        "accelerate",
        "lightning",
        "pytorch_lightning",
        "lightning_fabric",
        "torchtune",
        "tensorflow",
        "keras",
        "deepspeed",
        "megatron",
        "mmengine",
        "fairseq",
    }
)
_SEED_NAMES = frozenset(
    {"manual_seed", "manual_seed_all", "seed", "set_seed", "seed_everything", "set_random_seed"}
)
# These reseed from OS entropy: the run cannot be reproduced.
_NONDETERMINISTIC = frozenset(
    {"torch.seed", "torch.random.seed", "torch.cuda.seed", "torch.cuda.seed_all"}
)
_STATE_CALLS = frozenset(
    {
        "torch.set_rng_state",
        "torch.random.set_rng_state",
        "torch.cuda.set_rng_state",
        "torch.cuda.set_rng_state_all",
        "torch.cuda.random.set_rng_state",
        "torch.cuda.random.set_rng_state_all",
        "numpy.random.set_state",
        "random.setstate",
    }
)
_UNREPRODUCIBLE = frozenset({Source.TIME, Source.RANDOM, Source.PID})
_TARGETED = frozenset(
    {Source.RANK, Source.RANDOM, Source.WORLD_SIZE, Source.HOST, Source.TIMEBOMB, Source.STEP}
)
_DATA_METHODS = frozenset({"__getitem__", "__iter__", "__next__", "__getitems__"})

INFO = RuleInfo(
    id="lint.seed-override",
    title="seed override",
    catches=(
        "torch/numpy/random/transformers/lightning seeding from time, pid, another RNG or "
        "an environment variable, or with no seed; reseeding inside a loop, in a function "
        "called from a loop, in Dataset __getitem__/__iter__, in a worker_init_fn that "
        "does not derive from torch.initial_seed(), a second seeding of the same RNG in "
        "one scope, seeding under a rank/step/host condition, and replacing RNG state "
        "(set_rng_state, np.random.set_state, random.setstate) inside loops"
    ),
    rationale=(
        "The incident changed random seeds in shared code: runs stopped being "
        "reproducible and data order drifted. Seeding happens once, at start-up, from "
        "configuration; anything else changes what the run computes."
    ),
    fix=(
        "Seed once at start-up from the run's configuration (add the rank if each rank "
        "needs its own stream); in worker_init_fn derive from torch.initial_seed(); use a "
        "local torch.Generator for per-item randomness; restore RNG state only when "
        "resuming from a checkpoint."
    ),
    severity="low-high",
)


def _kind(ctx: FileContext, call: ast.Call) -> str | None:
    """'seed', 'entropy' (reseeds from OS entropy) or 'state' for RNG calls; else None."""
    qualname = ctx.resolve(call.func)
    if qualname is None:
        return None
    if qualname in _NONDETERMINISTIC:
        return "entropy"
    if qualname in _STATE_CALLS:
        return "state"
    root = qualname.split(".")[0]
    if root in _SEED_ROOTS and last_part(qualname) in _SEED_NAMES:
        return "seed"
    return None


def _worker_init_functions(ctx: FileContext) -> set[str]:
    names: set[str] = set()
    for call in ctx.calls():
        for keyword in call.keywords:
            if keyword.arg in ("worker_init_fn", "collate_fn") and isinstance(
                keyword.value, ast.Name | ast.Attribute
            ):
                value = keyword.value
                names.add(value.id if isinstance(value, ast.Name) else value.attr)
    return names


def _data_method(ctx: FileContext, function: FunctionNode | None) -> bool:
    return (
        function is not None
        and function.name in _DATA_METHODS
        and ctx.flow.enclosing_class(function) is not None
    )


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield suspicious seeding and RNG-state replacement."""
    workers = _worker_init_functions(ctx)
    loop_called = ctx.flow.loop_called_functions()
    first_in_scope: dict[tuple[int, str], ast.Call] = {}
    for call in ctx.calls():
        kind = _kind(ctx, call)
        if kind is None:
            continue
        qualname = str(ctx.resolve(call.func))
        function = ctx.flow.enclosing_function(call)
        args: Kinds = frozenset()
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            args |= ctx.flow.taint(arg)
        reasons: list[tuple[Severity, str]] = []
        kinds: set[Source] = set()
        related: list[ast.AST] = []

        if kind == "entropy":
            reasons.append((Severity.HIGH, f"{qualname}() reseeds from OS entropy"))
        elif kind == "seed" and not call.args and not call.keywords:
            reasons.append((Severity.HIGH, f"{qualname}() without a seed uses time or entropy"))
        if args & _UNREPRODUCIBLE:
            kinds |= args & _UNREPRODUCIBLE
            reasons.append(
                (Severity.HIGH, f"{qualname} is given a value derived from {describe(args)}")
            )
        elif kind == "seed" and Source.ENV in args:
            kinds.add(Source.ENV)
            reasons.append((Severity.MEDIUM, f"{qualname} takes its seed from the environment"))

        if ctx.flow.in_loop(call):
            reasons.append((Severity.HIGH, f"{qualname} is called inside a loop"))
        elif function is not None and function.name in loop_called:
            site = loop_called[function.name]
            related.append(site)
            reasons.append(
                (
                    Severity.HIGH,
                    f"{qualname} runs in {function.name}(), which is called from a loop "
                    f"(line {site.lineno})",
                )
            )
        if _data_method(ctx, function) and function is not None:
            reasons.append((Severity.HIGH, f"{qualname} reseeds in Dataset.{function.name}"))
        elif (
            function is not None
            and function.name in workers
            and kind != "state"
            and Source.WORKER_SEED not in args
        ):
            reasons.append(
                (
                    Severity.HIGH,
                    f"{qualname} in data-loader hook {function.name}() does not derive from "
                    "torch.initial_seed()",
                )
            )

        conditional: Kinds = frozenset()
        for condition in ctx.flow.conditions(call):
            if condition.kinds & _TARGETED:
                conditional |= condition.kinds & _TARGETED
                related.append(condition.test)
        if conditional:
            kinds |= conditional
            reasons.append(
                (Severity.HIGH, f"{qualname} runs only depending on {describe(conditional)}")
            )

        if kind != "state":
            scope_key = (id(ctx.flow.scope_of(call)), qualname)
            first = first_in_scope.get(scope_key)
            if first is None:
                first_in_scope[scope_key] = call
            elif not ctx.flow.in_loop(call):
                related.append(first)
                reasons.append(
                    (
                        Severity.MEDIUM,
                        f"{qualname} reseeds after the first seeding at line {first.lineno}",
                    )
                )
        if kind == "state" and not reasons:
            reasons.append((Severity.LOW, f"{qualname} replaces the RNG state"))
        if not reasons:
            continue
        severity = max((r[0] for r in reasons), key=lambda s: s.level)
        message = "; ".join(text for _, text in reasons)
        yield Hit(call, severity, message, frozenset(kinds), tuple(related))


RULE = Rule(info=INFO, check=check)
