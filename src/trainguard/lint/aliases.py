"""Import alias resolution: turn ``t.sleep`` or ``nap`` back into ``time.sleep``.

An insider who knows the linter looks for ``time.sleep`` writes ``import time as
t``, ``from time import sleep as nap``, ``getattr(time, "sl" + "eep")`` or
``__import__("time").sleep`` instead. :class:`ImportMap` follows those spellings so
that rules can match on fully qualified names. Resolution is purely syntactic: the
linted module is never imported.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable

# C-accelerated or platform twins that expose the same dangerous functions.
_CANONICAL_ROOTS = {
    "_pickle": "pickle",
    "cPickle": "pickle",
    "posix": "os",
    "nt": "os",
    "posixpath": "os.path",
    "ntpath": "os.path",
    "_socket": "socket",
    "_signal": "signal",
    "__builtin__": "builtins",
    "__builtins__": "builtins",
}

_BUILTIN_NAMES = frozenset(dir(builtins))


def canonical(qualname: str) -> str:
    """Map a C/platform twin module prefix to its public name (``_pickle.loads`` -> ``pickle``)."""
    root, dot, rest = qualname.partition(".")
    mapped = _CANONICAL_ROOTS.get(root)
    if mapped is None:
        return qualname
    return mapped + dot + rest if rest else mapped


def const_str(node: ast.AST | None) -> str | None:
    """The value of a string expression built only from literals (``"sl" + "eep"``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = const_str(node.left), const_str(node.right)
        if left is not None and right is not None:
            return left + right
    if isinstance(node, ast.JoinedStr):
        parts: list[str] = []
        for value in node.values:
            text = const_str(value)
            if text is None:
                return None
            parts.append(text)
        return "".join(parts)
    return None


def _bound_names(nodes: list[ast.AST]) -> set[str]:
    """Names the module binds to its own functions and classes (they shadow builtins)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


class ImportMap:
    """Local name -> fully qualified name, from every import and alias in one module.

    Imports anywhere in the file count (function-level imports included): the map
    is flow-insensitive on purpose, because a rule that misses an alias bound in a
    branch is a rule an insider can dodge with one ``if True:``.
    """

    def __init__(self, tree: ast.AST, nodes: list[ast.AST] | None = None) -> None:
        if nodes is None:
            nodes = list(ast.walk(tree))
        self.names: dict[str, str] = {"__builtins__": "builtins"}
        self.star_modules: list[str] = []
        self.local_defs = _bound_names(nodes)
        self._collect_imports(nodes)
        self._collect_assigned_aliases(nodes)

    def _collect_imports(self, nodes: list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.names[alias.asname] = canonical(alias.name)
                    else:
                        root = alias.name.split(".")[0]
                        self.names[root] = canonical(root)
            elif isinstance(node, ast.ImportFrom):
                module = canonical(node.module or "")
                if node.level:
                    # Relative imports name the project's own modules; keep them apart
                    # from the standard library and torch so they never match a sink.
                    module = "." * node.level + module
                for alias in node.names:
                    if alias.name == "*":
                        self.star_modules.append(module)
                        continue
                    qualified = f"{module}.{alias.name}" if module else alias.name
                    self.names[alias.asname or alias.name] = canonical(qualified)

    def _collect_assigned_aliases(self, nodes: list[ast.AST]) -> None:
        """``nap = time.sleep`` or ``k = getattr(os, "kill")`` make ``nap``/``k`` aliases.

        Two passes so that an alias of an alias (``a = time; b = a.sleep``) resolves.
        A name assigned two different resolvable values keeps the first: either way
        one of its uses is a sink and the rule tables decide.
        """
        assigns: list[tuple[str, ast.expr]] = []
        for node in nodes:
            if isinstance(node, ast.Assign):
                assigns.extend(
                    (target.id, node.value)
                    for target in node.targets
                    if isinstance(target, ast.Name)
                )
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr):
                target, value = node.target, node.value
                if isinstance(target, ast.Name) and value is not None:
                    assigns.append((target.id, value))
        for _ in range(2):
            for name, value in assigns:
                if name in self.names:
                    continue
                if not isinstance(value, ast.Name | ast.Attribute | ast.Call | ast.Subscript):
                    continue
                resolved = self.resolve(value)
                if resolved is not None and self._is_module_rooted(resolved):
                    self.names[name] = resolved

    def _is_module_rooted(self, qualname: str) -> bool:
        roots = {value.split(".")[0] for value in self.names.values()}
        return qualname.split(".")[0] in roots

    def resolve(self, node: ast.AST) -> str | None:
        """Fully qualified dotted name of a name, attribute chain or dynamic lookup.

        Returns the bare identifier for names that are neither imported nor defined in
        the module (builtins such as ``open``, ``exec``, and plain local variables),
        and None for expressions that have no static name (call results, literals).
        """
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            if node.id in self.local_defs:
                return None
            if self.star_modules and node.id not in _BUILTIN_NAMES:
                return f"{self.star_modules[-1]}.{node.id}"
            return node.id
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return None if base is None else f"{base}.{node.attr}"
        if isinstance(node, ast.Call):
            return self._resolve_dynamic(node)
        if isinstance(node, ast.Subscript):
            # __builtins__["exec"], sys.modules["os"], vars(builtins)["exec"]
            key = const_str(node.slice)
            base = self.resolve(node.value)
            if key is None or base is None:
                return None
            if base == "sys.modules":
                return canonical(key)
            if base in ("builtins", "builtins.__dict__"):
                return f"builtins.{key}"
            if base.endswith(".__dict__"):
                return f"{base.removesuffix('.__dict__')}.{key}"
        return None

    def _resolve_dynamic(self, call: ast.Call) -> str | None:
        func = self.resolve(call.func)
        if func in ("__import__", "builtins.__import__", "importlib.import_module"):
            name = const_str(call.args[0]) if call.args else None
            return canonical(name) if name else None
        if func in ("getattr", "builtins.getattr") and len(call.args) >= 2:
            base = self.resolve(call.args[0])
            attr = const_str(call.args[1])
            if base is not None and attr is not None:
                return f"{base}.{attr}"
        if func in ("vars", "builtins.vars") and len(call.args) == 1:
            base = self.resolve(call.args[0])
            return None if base is None else f"{base}.__dict__"
        return None


def matches(qualname: str | None, names: Iterable[str]) -> bool:
    """True when ``qualname`` is one of ``names`` (exact dotted match)."""
    return qualname is not None and qualname in names


def last_part(qualname: str | None) -> str:
    """The final component of a dotted name (``torch.distributed.get_rank`` -> ``get_rank``)."""
    return "" if qualname is None else qualname.rsplit(".", 1)[-1]
