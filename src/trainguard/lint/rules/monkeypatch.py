"""``lint.monkeypatch``: replacing torch, numpy, random or builtins behaviour at run time.

The incident modified optimizers and data loaders in shared code. The cheapest way
to do that without touching site-packages is a monkeypatch in the training
repository: ``torch.optim.Adam.step = evil``, ``setattr(torch, "load", ...)``,
``sys.modules["torch"] = shim``, a global optimizer hook. Training code configures
libraries through their settings (``torch.backends.*``); it does not rebind
their functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.aliases import const_str, last_part
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo
from trainguard.lint.flow import chain_text

_CRITICAL_ROOTS = frozenset({"torch", "numpy", "random", "builtins"})
_HIGH_ROOTS = frozenset(
    {
        "os",
        "time",
        "math",
        "pickle",
        "socket",
        "subprocess",
        "signal",
        "importlib",
        "safetensors",
        "transformers",
        "accelerate",
        "deepspeed",
        "megatron",
        "apex",
        "torchtune",
        "lightning",
        "pytorch_lightning",
        "datasets",
        "tensorflow",
        "jax",
        "threading",
        "multiprocessing",
        "functools",
        "copy",
        "shutil",
    }
)
# Documented configuration switches, not behaviour: assigning them is how they are used.
_SETTINGS_PREFIXES = (
    "torch.backends.",
    "torch._dynamo.config.",
    "torch._inductor.config.",
    "torch._functorch.config.",
    "torch._logging.",
    "torch.jit._state.",
    "os.environ",
)
_GLOBAL_HOOKS = frozenset(
    {
        "register_optimizer_step_pre_hook",
        "register_optimizer_step_post_hook",
        "register_module_forward_hook",
        "register_module_forward_pre_hook",
        "register_module_backward_hook",
        "register_module_full_backward_hook",
        "register_module_full_backward_pre_hook",
        "register_module_buffer_registration_hook",
        "register_module_parameter_registration_hook",
        "register_module_module_registration_hook",
    }
)
_MODE_BASES = frozenset(
    {
        "torch.overrides.TorchFunctionMode",
        "torch.utils._python_dispatch.TorchDispatchMode",
    }
)
_OPTIMIZER_METHODS = frozenset({"step", "zero_grad"})
_IMPORT_HOOK_LISTS = frozenset({"sys.meta_path", "sys.path_hooks"})

INFO = RuleInfo(
    id="lint.monkeypatch",
    title="monkeypatch",
    catches=(
        "assignment, augmented assignment, del or setattr on attributes of torch, numpy, "
        "random, builtins (critical) or os/time/pickle/socket/transformers/... (high), "
        "through any import alias; instance patches of optimizer step/zero_grad; "
        "sys.modules[...] replacement; import hooks on sys.meta_path/path_hooks; global "
        "module/optimizer hooks; TorchFunctionMode/TorchDispatchMode subclasses"
    ),
    rationale=(
        "The incident changed the behaviour of optimizers and data loaders. A monkeypatch "
        "in the training repository changes every run that imports it without touching "
        "site-packages, so environment verification cannot see it."
    ),
    fix=(
        "Subclass or wrap explicitly (class MyAdam(torch.optim.Adam)) and pass the object "
        "in; configure libraries through their documented settings (torch.backends.*)."
    ),
    severity="medium-critical",
)


def _protected(ctx: FileContext, node: ast.AST) -> tuple[Severity, str] | None:
    """Severity and dotted name when ``node`` names an attribute of a protected module."""
    qualname = ctx.resolve(node)
    if qualname is None or "." not in qualname:
        return None
    root_name = _root_name(node)
    if root_name is not None and root_name not in ctx.imports.names:
        return None  # a local variable that merely shares a module's name
    if qualname.startswith(_SETTINGS_PREFIXES):
        return None
    root = qualname.split(".")[0]
    if root in _CRITICAL_ROOTS:
        return Severity.CRITICAL, qualname
    if root in _HIGH_ROOTS:
        return Severity.HIGH, qualname
    return None


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _optimizer_like(ctx: FileContext, node: ast.AST) -> bool:
    text = (chain_text(node) or "").lower()
    if "optim" in text or "sched" in text:
        return True
    if isinstance(node, ast.Name):
        for value in ctx.flow.values_of(node.id, ctx.flow.scope_of(node)):
            if isinstance(value, ast.Call):
                qualname = ctx.resolve(value.func) or ""
                if qualname.startswith(("torch.optim.", "transformers.optimization.")):
                    return True
    return False


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        return [node.target]
    if isinstance(node, ast.Delete):
        return list(node.targets)
    return []


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield patches of library behaviour."""
    for node in ctx.flow.nodes:
        for target in _targets(node):
            yield from _check_target(ctx, node, target)
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if ctx.resolve(base) in _MODE_BASES:
                    yield Hit(
                        node,
                        Severity.MEDIUM,
                        f"class {node.name} subclasses {ctx.resolve(base)}, which intercepts "
                        "every torch operation while active",
                    )
    for call in ctx.calls():
        yield from _check_call(ctx, call)


def _check_target(ctx: FileContext, stmt: ast.AST, target: ast.expr) -> Iterator[Hit]:
    verb = "deletes" if isinstance(stmt, ast.Delete) else "replaces"
    if isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _check_target(ctx, stmt, element)
        return
    if isinstance(target, ast.Subscript):
        container = ctx.resolve(target.value)
        if container == "sys.modules":
            key = const_str(target.slice)
            root = (key or "").split(".")[0]
            severity = Severity.CRITICAL if root in _CRITICAL_ROOTS else Severity.HIGH
            yield Hit(stmt, severity, f"{verb} sys.modules[{key or '...'!r}]: swaps a module")
            return
        if container is not None and container.endswith(".__dict__"):
            found = _protected(ctx, target.value)
            if found is not None:
                yield Hit(stmt, found[0], f"{verb} an entry of {found[1]}")
        return
    if not isinstance(target, ast.Attribute):
        return
    found = _protected(ctx, target)
    if found is not None:
        yield Hit(stmt, found[0], f"{verb} {found[1]} at run time")
        return
    if target.attr in _OPTIMIZER_METHODS and _optimizer_like(ctx, target.value):
        yield Hit(
            stmt,
            Severity.CRITICAL,
            f"{verb} .{target.attr} of optimizer {chain_text(target.value) or '...'}",
        )


def _check_call(ctx: FileContext, call: ast.Call) -> Iterator[Hit]:
    qualname = ctx.resolve(call.func)
    if qualname in ("setattr", "builtins.setattr", "delattr", "builtins.delattr") and call.args:
        found = _protected(ctx, ast.Attribute(value=call.args[0], attr="_", ctx=ast.Load()))
        name = const_str(call.args[1]) if len(call.args) > 1 else None
        if found is not None:
            owner = found[1].rsplit(".", 1)[0]
            yield Hit(call, found[0], f"{qualname} patches {owner}.{name or '<dynamic>'}")
        elif name in _OPTIMIZER_METHODS and _optimizer_like(ctx, call.args[0]):
            yield Hit(call, Severity.CRITICAL, f"{qualname} patches optimizer .{name}")
        return
    if qualname is None:
        return
    if qualname.startswith("torch.") and last_part(qualname) in _GLOBAL_HOOKS:
        yield Hit(
            call,
            Severity.HIGH,
            f"{qualname} installs a global hook that runs inside every module or optimizer",
        )
        return
    owner, _, method = qualname.rpartition(".")
    if owner == "sys.modules" and method in ("update", "__setitem__", "setdefault"):
        yield Hit(call, Severity.HIGH, f"sys.modules.{method} swaps modules")
    elif owner in _IMPORT_HOOK_LISTS and method in ("insert", "append", "extend"):
        yield Hit(call, Severity.HIGH, f"{owner}.{method} installs an import hook")


RULE = Rule(info=INFO, check=check)
