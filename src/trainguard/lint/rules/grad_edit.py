"""``lint.grad-edit``: gradients and parameters changed outside the optimizer.

The incident corrupted gradients so that training failed or slowed silently, and
reversed training steps. Between ``backward()`` and ``optimizer.step()`` nothing in
a training script needs to write ``p.grad`` except documented utilities
(``clip_grad_norm_``, the all-reduce of a manual DDP); between steps nothing needs
to write ``p.data`` except initialisation and weight averaging of a *separate*
model. Edits that depend on the rank, the step or a random draw, and sign flips,
are sabotage patterns.

Heuristic, documented in docs/lint.md:
- a ``.grad`` write (in-place method, assignment, augmented assignment, ``out=``)
  is medium; ``zero_``/``detach_``/``= None`` and division by the world size (the
  manual all-reduce average) are exempt;
- a ``.data`` or parameter in-place write is low (initialisation, EMA, weight
  tying); writes to shadow copies (names with ema/shadow/swa/average/teacher/
  target) are not reported unless conditional;
- either becomes high when it depends on the step, world size or time, critical
  on the rank, a random draw or the host; a sign flip is at least high;
- code inside a ``torch.optim.Optimizer`` subclass is the optimizer: only its
  conditional edits and sign flips are reported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo, describe
from trainguard.lint.flow import Kinds, chain_text
from trainguard.lint.sources import Source

_INPLACE = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]_$")
_EXEMPT_METHODS = frozenset({"zero_", "detach_", "requires_grad_", "share_memory_"})
_SIGN_FLIP_METHODS = frozenset({"neg_", "negative_"})
_SHADOW_WORDS = ("ema", "shadow", "swa", "average", "avg", "teacher", "target", "momentum_enc")
_CRITICAL_KINDS = frozenset({Source.RANK, Source.RANDOM, Source.HOST})
_HIGH_KINDS = frozenset({Source.STEP, Source.WORLD_SIZE, Source.TIME, Source.TIMEBOMB})
_ARG_KINDS = frozenset({Source.RANK, Source.RANDOM, Source.HOST, Source.TIME})
_PARAM_SOURCES = frozenset({"parameters", "named_parameters"})
_PARAM_ATTRS = frozenset({"weight", "bias"})

INFO = RuleInfo(
    id="lint.grad-edit",
    title="gradient or parameter edit",
    catches=(
        "in-place methods on p.grad / p.data / parameters (mul_, add_, neg_, copy_...), "
        "assignments and augmented assignments to .grad or .data, out= writes into them, "
        "and tensor register_hook calls; severity rises when the edit depends on rank, "
        "step, randomness or host, or flips the gradient's sign"
    ),
    rationale=(
        "The incident corrupted gradients and reversed training steps. Writes to .grad "
        "between backward() and step() bypass the optimizer and every check on it; a "
        "rank-dependent edit corrupts one replica before the all-reduce spreads it."
    ),
    fix=(
        "Scale the loss instead of the gradients (loss / accumulation_steps); clip with "
        "torch.nn.utils.clip_grad_norm_; let DDP average gradients; keep EMA weights in a "
        "separate model updated with torch.no_grad()."
    ),
    severity="low-critical",
)


def _has_attr(node: ast.AST, name: str) -> bool:
    """``p.grad``, ``p.grad.data``, ``p.grad[0]``: an attribute chain that passes ``name``."""
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Attribute) and node.attr == name:
            return True
        node = node.value
    return False


def _param_names(ctx: FileContext) -> set[str]:
    """Loop variables bound to parameters: ``for p in model.parameters()`` and friends."""
    names: set[str] = set()
    for node in ctx.flow.nodes:
        if isinstance(node, ast.For | ast.comprehension):
            names |= _params_from(node.target, node.iter)
    return names


def _params_from(target: ast.AST, iterable: ast.AST) -> set[str]:
    if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute):
        method = iterable.func.attr
        if method in _PARAM_SOURCES:
            if method == "named_parameters" and isinstance(target, ast.Tuple | ast.List):
                target = target.elts[-1]
            return {target.id} if isinstance(target, ast.Name) else set()
    if (
        isinstance(iterable, ast.Call)
        and isinstance(iterable.func, ast.Name)
        and iterable.func.id == "zip"
        and isinstance(target, ast.Tuple | ast.List)
    ):
        names: set[str] = set()
        for element, source in zip(target.elts, iterable.args, strict=False):
            names |= _params_from(element, source)
        return names
    if isinstance(iterable, ast.Subscript) and const_key(iterable) == "params":
        return {target.id} if isinstance(target, ast.Name) else set()
    if (
        isinstance(iterable, ast.Name | ast.Attribute)
        and "param" in (chain_text(iterable) or "").lower().rsplit(".", 1)[-1]
    ):
        return {target.id} if isinstance(target, ast.Name) else set()
    return set()


def _param_data(node: ast.AST, params: set[str]) -> bool:
    """``p.data`` / ``layer.weight.data``: the ``.data`` of something parameter-like.

    ``self.data`` or ``batch.data`` (a data set's storage) is not a parameter.
    """
    while isinstance(node, ast.Attribute | ast.Subscript):
        if isinstance(node, ast.Attribute) and node.attr == "data":
            base = node.value
            if isinstance(base, ast.Subscript):
                base = base.value
            if isinstance(base, ast.Name) and base.id in params:
                return True
            if isinstance(base, ast.Attribute) and base.attr in _PARAM_ATTRS:
                return True
            text = (chain_text(base) or "").lower().rsplit(".", 1)[-1]
            return any(word in text for word in ("param", "weight", "bias", "grad"))
        node = node.value
    return False


def const_key(node: ast.Subscript) -> str | None:
    """The literal key of ``group["params"]``."""
    key = node.slice
    return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None


def _in_optimizer_class(ctx: FileContext, node: ast.AST) -> bool:
    owner = ctx.flow.enclosing_class(node)
    if owner is None:
        return False
    for base in owner.bases:
        qualname = ctx.resolve(base) or ""
        if qualname.startswith("torch.optim") or qualname.endswith("Optimizer"):
            return True
    return False


def _is_shadow(node: ast.AST) -> bool:
    text = (chain_text(node) or "").lower()
    return any(word in text for word in _SHADOW_WORDS)


def _negative_constant(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant) and isinstance(
            node.operand.value, int | float
        )
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float) and node.value < 0


class _Edit:
    """One write to gradients or parameters, as the rule sees it."""

    def __init__(self, node: ast.AST, target: ast.AST, what: str, *, flip: bool) -> None:
        self.node = node
        self.target = target
        self.what = what
        self.flip = flip
        self.grad = _has_attr(target, "grad")
        self.exempt = False
        self.args: list[ast.AST] = []


def _edits(ctx: FileContext, params: set[str]) -> Iterator[_Edit]:
    def is_param(node: ast.AST) -> bool:
        if _has_attr(node, "grad") or _param_data(node, params):
            return True
        if isinstance(node, ast.Name):
            return node.id in params
        return isinstance(node, ast.Attribute) and node.attr in _PARAM_ATTRS

    for node in ctx.flow.nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            receiver = node.func.value
            if _INPLACE.match(method) and is_param(receiver):
                flip = method in _SIGN_FLIP_METHODS or (
                    method in ("mul_", "div_")
                    and bool(node.args)
                    and _negative_constant(node.args[0])
                )
                edit = _Edit(
                    node, receiver, f"{chain_text(receiver) or '...'}.{method}()", flip=flip
                )
                edit.exempt = method in _EXEMPT_METHODS or (
                    method == "div_"
                    and bool(node.args)
                    and Source.WORLD_SIZE in ctx.flow.taint(node.args[0])
                )
                edit.args = list(node.args)
                yield edit
            elif method == "register_hook" and is_param(receiver):
                edit = _Edit(
                    node, receiver, f"{chain_text(receiver) or '...'}.register_hook()", flip=False
                )
                edit.grad = True
                yield edit
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "out" and (
                    _has_attr(keyword.value, "grad") or _param_data(keyword.value, params)
                ):
                    edit = _Edit(
                        node, keyword.value, f"out={chain_text(keyword.value)}", flip=False
                    )
                    edit.args = list(node.args)
                    yield edit
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if not isinstance(target, ast.Attribute | ast.Subscript):
                    continue
                if not (_has_attr(target, "grad") or _param_data(target, params)):
                    continue
                value = node.value
                flip = _is_negation(value) or (
                    isinstance(node, ast.AugAssign)
                    and isinstance(node.op, ast.Mult | ast.Div)
                    and _negative_constant(value)
                )
                edit = _Edit(
                    node, target, f"assignment to {chain_text(target) or '...'}", flip=flip
                )
                edit.exempt = isinstance(value, ast.Constant) and value.value is None
                if (
                    isinstance(node, ast.AugAssign)
                    and isinstance(node.op, ast.Div)
                    and Source.WORLD_SIZE in ctx.flow.taint(value)
                ):
                    edit.exempt = True
                edit.args = [value]
                yield edit


def _is_negation(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _negative_constant(node.left) or _negative_constant(node.right)
    return False


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield gradient and parameter writes outside the optimizer."""
    params = _param_names(ctx)
    for edit in _edits(ctx, params):
        conditions: Kinds = frozenset()
        related: list[ast.AST] = []
        for condition in ctx.flow.conditions(edit.node):
            relevant = condition.kinds & (_CRITICAL_KINDS | _HIGH_KINDS | {Source.ENV})
            if relevant:
                conditions |= relevant
                related.append(condition.test)
        arg_kinds: Kinds = frozenset()
        for arg in edit.args:
            arg_kinds |= ctx.flow.taint(arg) & _ARG_KINDS
        kinds = conditions | arg_kinds
        if edit.exempt:
            # Clearing or averaging gradients under a scale or step condition is how
            # FSDP and accumulation work; only rank, chance and host make it targeted.
            kinds &= _CRITICAL_KINDS
        severity: Severity | None
        if kinds & _CRITICAL_KINDS:
            severity = Severity.CRITICAL
        elif kinds & _HIGH_KINDS or edit.flip:
            severity = Severity.HIGH
        elif Source.ENV in kinds:
            severity = Severity.MEDIUM
        elif edit.exempt or _in_optimizer_class(ctx, edit.node) or _is_shadow(edit.target):
            severity = None
        else:
            severity = Severity.MEDIUM if edit.grad else Severity.LOW
        if severity is None:
            continue
        what = "gradient" if edit.grad else "parameter"
        parts = [f"{edit.what} writes a {what} outside the optimizer"]
        if edit.flip:
            parts.append("flips its sign")
        if kinds:
            parts.append(f"depending on {describe(kinds)}")
        yield Hit(edit.node, severity, ", ".join(parts), kinds, tuple(related))


RULE = Rule(info=INFO, check=check)
