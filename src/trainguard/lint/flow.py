"""Simple dataflow over one module: which values depend on scale, rank, host, chance...

``ws = dist.get_world_size()`` followed by ``if ws > 256: time.sleep(3)`` is the
incident's pattern; ``big = lambda: ws > 256`` or ``def is_big(): return ...``
are the obvious next moves of an insider who reads the linter. :class:`Flow` keeps
a flow-insensitive map from each scope's local names (and module-wide attribute
chains such as ``self.ws``) to the :class:`~trainguard.lint.sources.Source` kinds
their values may carry, and solves it to a fixpoint together with the return
values and parameters of the module's own functions (call sites bind arguments to
parameters). Flow-insensitive means over-approximate: a name tainted on any path
is tainted everywhere in its scope, which is the safe direction for a linter that
an adversary studies.

It also answers the structural questions rules ask: the conditions that control a
node (enclosing ``if``/``while``/ternary/boolean operands, loop iterables, and
earlier guard clauses that ``return``), whether a node runs in a loop, and which
module functions (transitively) contain a sink.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from trainguard.lint.aliases import ImportMap, const_str
from trainguard.lint.sources import (
    Source,
    call_kinds,
    env_key_kind,
    identifier_kinds,
    is_fixed_date,
)

ScopeNode = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
Kinds = frozenset[Source]
_EMPTY: Kinds = frozenset()
_MAX_PASSES = 8
_EXIT_CALLS = frozenset({"sys.exit", "exit", "quit", "os._exit", "os.abort"})


@dataclass(frozen=True, slots=True)
class Condition:
    """One test that controls whether (or how often) a node runs."""

    test: ast.AST
    """The expression tested (``if`` test, loop iterable, boolean operand...)."""
    kinds: Kinds
    """What the test depends on."""


def chain_text(node: ast.AST) -> str | None:
    """``self.cfg.ws`` for an attribute chain rooted at a name; None otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = chain_text(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _terminates(stmts: list[ast.stmt], imports: ImportMap) -> bool:
    """True when a block always leaves the enclosing block (guard clause)."""
    if not stmts:
        return False
    last = stmts[-1]
    if isinstance(last, ast.Return | ast.Raise | ast.Continue | ast.Break):
        return True
    return (
        isinstance(last, ast.Expr)
        and isinstance(last.value, ast.Call)
        and imports.resolve(last.value.func) in _EXIT_CALLS
    )


class Flow:
    """Taint map, parents, scopes and call graph of one parsed module."""

    def __init__(
        self, tree: ast.Module, imports: ImportMap, nodes: list[ast.AST] | None = None
    ) -> None:
        self.tree = tree
        self.imports = imports
        self.nodes: list[ast.AST] = list(ast.walk(tree)) if nodes is None else nodes
        """Every node of the module, walked once and shared by the rules."""
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in self.nodes:
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self.functions: dict[str, list[FunctionNode]] = {}
        for node in self.nodes:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                self.functions.setdefault(node.name, []).append(node)
        self._names: dict[ScopeNode, dict[str, Kinds]] = {}
        self._bound: dict[ScopeNode, set[str]] = {}
        self._attrs: dict[str, Kinds] = {}
        self._returns: dict[str, Kinds] = {}
        self._values: dict[tuple[ScopeNode, str], list[ast.expr]] = {}
        self._memo: dict[int, Kinds] | None = None
        self._solve()
        self._memo = {}

    # ----------------------------------------------------------------- structure
    def scope_of(self, node: ast.AST) -> ScopeNode:
        """The innermost function (or lambda, or the module) whose scope holds ``node``."""
        current = self.parents.get(node)
        while current is not None:
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                return current
            current = self.parents.get(current)
        return self.tree

    def enclosing_function(self, node: ast.AST) -> FunctionNode | None:
        """The innermost ``def`` around ``node``, skipping lambdas."""
        current = self.parents.get(node)
        while current is not None:
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
                return current
            current = self.parents.get(current)
        return None

    def enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        """The innermost class whose body holds ``node``."""
        current = self.parents.get(node)
        while current is not None:
            if isinstance(current, ast.ClassDef):
                return current
            current = self.parents.get(current)
        return None

    def _scope_chain(self, scope: ScopeNode) -> Iterator[ScopeNode]:
        yield scope
        current: ast.AST = scope
        while not isinstance(current, ast.Module):
            current = self.scope_of(current)
            yield current

    def _own_nodes(self, scope: ScopeNode) -> Iterator[ast.AST]:
        """Nodes of ``scope`` without descending into nested functions or lambdas."""
        stack: list[ast.AST] = (
            list(scope.body) if not isinstance(scope, ast.Lambda) else [scope.body]
        )
        while stack:
            node = stack.pop()
            yield node
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                # Decorators and defaults run in the enclosing scope; the body does not.
                if not isinstance(node, ast.Lambda):
                    stack.extend(node.decorator_list)
                stack.extend(node.args.defaults)
                stack.extend(d for d in node.args.kw_defaults if d is not None)
                continue
            stack.extend(ast.iter_child_nodes(node))

    def scopes(self) -> list[ScopeNode]:
        """The module and every function and lambda in it."""
        found: list[ScopeNode] = [self.tree]
        found.extend(
            node
            for node in self.nodes
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        )
        return found

    # ----------------------------------------------------------------- solving
    def _solve(self) -> None:
        scopes = self.scopes()
        events: list[tuple[ScopeNode, ast.AST, ast.expr, bool]] = []
        returns: list[tuple[str, ast.expr, ScopeNode]] = []
        calls: list[tuple[ScopeNode, ast.Call]] = []
        for scope in scopes:
            self._names[scope] = {}
            self._bound[scope] = set()
            if not isinstance(scope, ast.Module):
                for arg in _all_args(scope.args):
                    self._bound[scope].add(arg.arg)
            for node in self._own_nodes(scope):
                for target, value, in_class in self._bindings(node):
                    events.append((scope, target, value, in_class))
                    self._record_bound(scope, target)
                if (
                    isinstance(node, ast.Return)
                    and node.value is not None
                    and isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef)
                ):
                    returns.append((scope.name, node.value, scope))
                if isinstance(node, ast.Call):
                    calls.append((scope, node))
        for _ in range(_MAX_PASSES):
            changed = False
            for scope, target, value, in_class in events:
                changed |= self._bind(scope, target, self.taint(value, scope), in_class)
            for name, value, scope in returns:
                changed |= self._merge(self._returns, name, self.taint(value, scope))
            for scope, call in calls:
                changed |= self._bind_parameters(scope, call)
            if not changed:
                break

    def _bindings(self, node: ast.AST) -> Iterator[tuple[ast.AST, ast.expr, bool]]:
        in_class = isinstance(self.parents.get(node), ast.ClassDef)
        if isinstance(node, ast.Assign):
            for target in node.targets:
                yield target, node.value, in_class
                self._remember_value(node, target, node.value)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign) and node.value is not None:
            yield node.target, node.value, in_class
            self._remember_value(node, node.target, node.value)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            yield node.target, node.iter, False
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            yield node.optional_vars, node.context_expr, False
        elif isinstance(node, ast.NamedExpr):
            yield node.target, node.value, False
            self._remember_value(node, node.target, node.value)

    def _remember_value(self, node: ast.AST, target: ast.AST, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._values.setdefault((self.scope_of(node), target.id), []).append(value)

    def _record_bound(self, scope: ScopeNode, target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            self._bound[scope].add(target.id)
        elif isinstance(target, ast.Tuple | ast.List):
            for element in target.elts:
                self._record_bound(scope, element)
        elif isinstance(target, ast.Starred):
            self._record_bound(scope, target.value)

    @staticmethod
    def _merge(table: dict[str, Kinds], key: str, kinds: Kinds) -> bool:
        old = table.get(key, _EMPTY)
        if kinds <= old:
            return False
        table[key] = old | kinds
        return True

    def _bind(self, scope: ScopeNode, target: ast.AST, kinds: Kinds, in_class: bool) -> bool:
        if not kinds:
            return False
        if isinstance(target, ast.Name):
            changed = self._merge(self._names[scope], target.id, kinds)
            if in_class:
                # A class attribute is read back as self.X / cls.X / Class.X.
                owner = self.enclosing_class(target)
                for prefix in ("self", "cls", owner.name if owner else "self"):
                    changed |= self._merge(self._attrs, f"{prefix}.{target.id}", kinds)
            return changed
        if isinstance(target, ast.Tuple | ast.List):
            changed = False
            for element in target.elts:  # no short-circuit: bind every element
                changed |= self._bind(scope, element, kinds, in_class)
            return changed
        if isinstance(target, ast.Starred):
            return self._bind(scope, target.value, kinds, in_class)
        if isinstance(target, ast.Attribute):
            text = chain_text(target)
            return False if text is None else self._merge(self._attrs, text, kinds)
        if isinstance(target, ast.Subscript):
            # cfg["ws"] = dist.get_world_size(): the container now carries the value.
            return self._bind(scope, target.value, kinds, in_class)
        return False

    def _bind_parameters(self, scope: ScopeNode, call: ast.Call) -> bool:
        """Arguments of a call to a module function flow into its parameters."""
        targets = self.local_callees(call)
        if not targets:
            return False
        changed = False
        for function in targets:
            params = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
            is_method = isinstance(call.func, ast.Attribute) and params[:1] in (["self"], ["cls"])
            if is_method:
                params = params[1:]
            for index, arg in enumerate(call.args):
                if isinstance(arg, ast.Starred) or index >= len(params):
                    continue
                kinds = self.taint(arg, scope)
                if kinds:
                    changed |= self._merge(self._names[function], params[index], kinds)
            for keyword in call.keywords:
                if keyword.arg is None:
                    continue
                kinds = self.taint(keyword.value, scope)
                if kinds:
                    changed |= self._merge(self._names[function], keyword.arg, kinds)
        return changed

    def local_callees(self, call: ast.Call) -> list[FunctionNode]:
        """Module functions a call may reach: ``f(...)``, ``self.f(...)``, ``Class.f(...)``."""
        func = call.func
        if isinstance(func, ast.Name) and func.id in self.imports.local_defs:
            return self.functions.get(func.id, [])
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and (func.value.id in ("self", "cls") or func.value.id in self.imports.local_defs)
        ):
            return self.functions.get(func.attr, [])
        return []

    # ----------------------------------------------------------------- queries
    def values_of(self, name: str, scope: ScopeNode) -> list[ast.expr]:
        """Expressions assigned to ``name`` in ``scope`` (or the enclosing scopes)."""
        for candidate in self._scope_chain(scope):
            values = self._values.get((candidate, name))
            if values:
                return values
        return []

    def taint(self, node: ast.AST, scope: ScopeNode | None = None) -> Kinds:
        """Source kinds an expression may depend on."""
        if scope is None:
            scope = self.scope_of(node)
        if self._memo is not None:
            cached = self._memo.get(id(node))
            if cached is not None:
                return cached
            result = self._taint(node, scope)
            self._memo[id(node)] = result
            return result
        return self._taint(node, scope)

    def _lookup(self, name: str, scope: ScopeNode) -> Kinds:
        for candidate in self._scope_chain(scope):
            if name in self._bound.get(candidate, ()) or name in self._names.get(candidate, {}):
                return self._names[candidate].get(name, _EMPTY)
        return _EMPTY

    def _taint(self, node: ast.AST, scope: ScopeNode) -> Kinds:
        if isinstance(node, ast.Constant | ast.Lambda):
            return _EMPTY
        if isinstance(node, ast.Name):
            kinds = identifier_kinds(node.id) | self._lookup(node.id, scope)
            if self.imports.resolve(node) == "os.environ":
                kinds |= {Source.ENV}
            return kinds
        if isinstance(node, ast.Attribute):
            kinds = identifier_kinds(node.attr) | self.taint(node.value, scope)
            text = chain_text(node)
            if text is not None:
                kinds |= self._attrs.get(text, _EMPTY)
            if self.imports.resolve(node) == "os.environ":
                kinds |= {Source.ENV}
            return kinds
        if isinstance(node, ast.Subscript):
            kinds = self.taint(node.value, scope) | self.taint(node.slice, scope)
            if self.imports.resolve(node.value) == "os.environ":
                kinds |= env_key_kind(const_str(node.slice))
            if _is_reversal(node.slice):
                kinds |= {Source.DECODED}
            return kinds
        if isinstance(node, ast.Call):
            return self._call_taint(node, scope)
        if isinstance(node, ast.Compare):
            return self._compare_taint(node, scope)
        result: Kinds = _EMPTY
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                result |= self.taint(child, scope)
            elif isinstance(child, ast.comprehension):
                result |= self.taint(child.iter, scope)
                for test in child.ifs:
                    result |= self.taint(test, scope)
            elif isinstance(child, ast.keyword):
                result |= self.taint(child.value, scope)
        return result

    def _call_taint(self, node: ast.Call, scope: ScopeNode) -> Kinds:
        qualname = self.imports.resolve(node.func)
        kinds = call_kinds(qualname, node)
        if isinstance(node.func, ast.Attribute):
            kinds |= self.taint(node.func.value, scope)
        for arg in node.args:
            kinds |= self.taint(arg, scope)
        for keyword in node.keywords:
            kinds |= self.taint(keyword.value, scope)
        for function in self.local_callees(node):
            kinds |= self._returns.get(function.name, _EMPTY)
        return kinds

    def _compare_taint(self, node: ast.Compare, scope: ScopeNode) -> Kinds:
        operands = [node.left, *node.comparators]
        kinds: Kinds = _EMPTY
        for operand in operands:
            kinds |= self.taint(operand, scope)
        if Source.TIME in kinds:
            for operand in operands:
                qualname = (
                    self.imports.resolve(operand.func) if isinstance(operand, ast.Call) else None
                )
                if is_fixed_date(operand, qualname):
                    kinds |= {Source.TIMEBOMB}
        return kinds

    def conditions(self, node: ast.AST) -> list[Condition]:
        """Every test that decides whether ``node`` runs, within its function.

        Covers enclosing ``if``/``elif``/``while`` tests, ternaries, earlier operands
        of ``and``/``or``, comprehension filters and iterables, ``for`` iterables,
        ``match`` subjects and guards, and guard clauses: an earlier ``if`` in the
        same block whose body always returns, raises, breaks or exits.
        """
        found: list[ast.AST] = []
        current = node
        while True:
            parent = self.parents.get(current)
            if parent is None:
                break
            for field in ("body", "orelse", "finalbody"):
                block = getattr(parent, field, None)
                if not isinstance(block, list):
                    continue
                for index, statement in enumerate(block):
                    if statement is current:
                        found.extend(self._guard_clauses(block[:index]))
                        break
            if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                break
            found.extend(self._direct_tests(parent, current))
            current = parent
        return [Condition(test, self.taint(test)) for test in found]

    def _guard_clauses(self, previous: list[ast.stmt]) -> list[ast.AST]:
        return [
            statement.test
            for statement in previous
            if isinstance(statement, ast.If)
            and (
                _terminates(statement.body, self.imports)
                or _terminates(statement.orelse, self.imports)
            )
        ]

    @staticmethod
    def _direct_tests(parent: ast.AST, current: ast.AST) -> list[ast.AST]:
        if isinstance(parent, ast.If | ast.While | ast.IfExp) and current is not parent.test:
            return [parent.test]
        if isinstance(parent, ast.BoolOp):
            tests: list[ast.AST] = []
            for value in parent.values:
                if value is current:
                    break
                tests.append(value)
            return tests
        if isinstance(parent, ast.For | ast.AsyncFor) and current not in (
            parent.iter,
            parent.target,
        ):
            # Only a counting loop's bound decides how often the body runs
            # (``for _ in range(int(ws > 256))``); iterating over data does not.
            return [parent.iter] if _is_range(parent.iter) else []
        if isinstance(parent, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            tests = []
            for generator in parent.generators:
                if generator is current:
                    break
                if _is_range(generator.iter):
                    tests.append(generator.iter)
                tests.extend(generator.ifs)
            return tests
        if isinstance(parent, ast.match_case) and parent.guard is not None:
            return [parent.guard]
        if isinstance(parent, ast.Match) and current is not parent.subject:
            return [parent.subject]
        return []

    def condition_kinds(self, node: ast.AST) -> Kinds:
        """Union of the kinds of every condition controlling ``node``."""
        kinds: Kinds = _EMPTY
        for condition in self.conditions(node):
            kinds |= condition.kinds
        return kinds

    def in_loop(self, node: ast.AST) -> bool:
        """True when ``node`` runs in a loop body or comprehension of its own function."""
        current = node
        parent = self.parents.get(current)
        while parent is not None:
            if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                return False
            if isinstance(parent, ast.For | ast.AsyncFor | ast.While) and current in parent.body:
                return True
            if isinstance(parent, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
                return True
            current, parent = parent, self.parents.get(parent)
        return False

    def calls_in(self, function: FunctionNode) -> Iterator[ast.Call]:
        """Calls in a function's body, nested functions excluded."""
        for node in self._own_nodes(function):
            if isinstance(node, ast.Call):
                yield node

    def loop_called_functions(self) -> dict[str, ast.Call]:
        """Module functions called (directly or transitively) from inside a loop.

        Maps the function name to the loop call site that makes it so; this is how
        "reseed in a function called from the training loop" is found.
        """
        found: dict[str, ast.Call] = {}
        for node in self.nodes:
            if isinstance(node, ast.Call) and self.in_loop(node):
                for function in self.local_callees(node):
                    found.setdefault(function.name, node)
        pending = list(found)
        while pending:
            name = pending.pop()
            for function in self.functions.get(name, []):
                for call in self.calls_in(function):
                    for callee in self.local_callees(call):
                        if callee.name not in found:
                            found[callee.name] = found[name]
                            pending.append(callee.name)
        return found

    def sink_functions(self, is_sink: Callable[[ast.Call], bool]) -> dict[str, ast.Call]:
        """Module functions that contain a sink call, directly or through other functions.

        Maps the function name to the sink call it reaches, so that ``if ws > 256:
        slow()`` can be reported at the call site with the sink it leads to.
        """
        found: dict[str, ast.Call] = {}
        for name, functions in self.functions.items():
            for function in functions:
                for call in self.calls_in(function):
                    if is_sink(call):
                        found.setdefault(name, call)
        for _ in range(_MAX_PASSES):
            changed = False
            for name, functions in self.functions.items():
                if name in found:
                    continue
                for function in functions:
                    for call in self.calls_in(function):
                        for callee in self.local_callees(call):
                            if callee.name in found and name not in found:
                                found[name] = found[callee.name]
                                changed = True
            if not changed:
                break
        return found


def _all_args(arguments: ast.arguments) -> list[ast.arg]:
    args = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    if arguments.vararg is not None:
        args.append(arguments.vararg)
    if arguments.kwarg is not None:
        args.append(arguments.kwarg)
    return args


def _is_range(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
    )


def _is_reversal(node: ast.AST) -> bool:
    """``[::-1]``: string reversal, a cheap obfuscation of exec'd code."""
    return (
        isinstance(node, ast.Slice)
        and isinstance(node.step, ast.UnaryOp)
        and isinstance(node.step.op, ast.USub)
        and isinstance(node.step.operand, ast.Constant)
        and node.step.operand.value == 1
    )
