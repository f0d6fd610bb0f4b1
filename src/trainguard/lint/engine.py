"""The lint engine: parse once, run every rule over the tree, turn hits into findings.

Why an engine of its own rather than bandit or semgrep plugins: the rules need one
shared dataflow (:mod:`trainguard.lint.flow`) that knows which branches depend on
world size, rank or host, and they must fail closed: a file that does not parse
is a ``lint.parse-error`` finding, never a silent skip. The linted code is only
ever parsed with :func:`ast.parse`; it is never imported or executed.
"""

from __future__ import annotations

import ast
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainguard.core.errors import LintError
from trainguard.core.findings import Finding, Severity
from trainguard.lint.aliases import ImportMap
from trainguard.lint.flow import Flow
from trainguard.lint.sources import Source

_logger = logging.getLogger(__name__)

PARSE_ERROR = "lint.parse-error"
MAX_SOURCE_BYTES = 16 * 1024 * 1024
"""Larger files are reported as unlintable rather than parsed (memory bound)."""
_SNIPPET_CHARS = 200
# Directories that never hold the project's own training code; a virtual environment
# (marked by pyvenv.cfg) is `trainguard env verify`'s job, not the linter's.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".tox",
        ".nox",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "node_modules",
    }
)


@dataclass(frozen=True, slots=True)
class RuleInfo:
    """Documentation of one rule; docs/lint.md is generated from the same text."""

    id: str
    """Stable dotted id (``lint.conditional-sleep``)."""
    title: str
    """Short name used in messages and evidence."""
    catches: str
    """What the rule catches, one sentence."""
    rationale: str
    """Why this is sabotage-like (ties to the incident)."""
    fix: str
    """What legitimate code should do instead."""
    severity: str
    """Severity range, for the docs table (``medium-critical``)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule's raw result, before it becomes a :class:`Finding`."""

    node: ast.AST
    """Where the problem is (its line is the finding's location)."""
    severity: Severity
    """How bad it is in this context."""
    message: str
    """One sentence, without the file name (the engine adds the location)."""
    sources: frozenset[Source] = frozenset()
    """What the guarding condition or the argument depended on."""
    related: tuple[ast.AST, ...] = ()
    """Other nodes that make up the finding (the condition), for ``--diff``."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule family: documentation plus a check over a parsed file."""

    info: RuleInfo
    """What the rule is and how to fix what it finds."""
    check: Callable[[FileContext], Iterable[Hit]]
    """Yields the rule's hits for one file."""


@dataclass
class FileContext:
    """Everything a rule needs about one parsed source file."""

    path: str
    """The file as the user named it (used in findings)."""
    text: str
    """Decoded source text."""
    tree: ast.Module
    """Parsed module (never executed)."""
    imports: ImportMap = field(init=False)
    """Alias resolution for this module."""
    flow: Flow = field(init=False)
    """Dataflow, conditions and call graph for this module."""
    lines: list[str] = field(init=False)
    """Source lines, for snippets."""
    _calls: list[ast.Call] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        nodes = list(ast.walk(self.tree))
        self.imports = ImportMap(self.tree, nodes)
        self.flow = Flow(self.tree, self.imports, nodes)
        self.lines = self.text.splitlines()

    def resolve(self, node: ast.AST) -> str | None:
        """Alias-resolved dotted name (see :meth:`ImportMap.resolve`)."""
        return self.imports.resolve(node)

    def calls(self) -> list[ast.Call]:
        """Every call in the module, in source order."""
        if self._calls is None:
            found = [node for node in self.flow.nodes if isinstance(node, ast.Call)]
            found.sort(key=lambda c: (c.lineno, c.col_offset))
            self._calls = found
        return self._calls

    def snippet(self, node: ast.AST) -> str:
        """Whitespace-normalised source of ``node`` (first line when it spans many)."""
        lineno = getattr(node, "lineno", None)
        if lineno is None or not 0 < lineno <= len(self.lines):
            return ""
        # ast.get_source_segment re-splits the whole file per call; slice our lines
        # instead (column offsets are UTF-8 byte offsets).
        end = min(int(getattr(node, "end_lineno", None) or lineno), lineno + 10, len(self.lines))
        col = getattr(node, "col_offset", None)
        end_col = getattr(node, "end_col_offset", None)
        parts = [line.encode("utf-8", "surrogateescape") for line in self.lines[lineno - 1 : end]]
        if end_col is not None and end == getattr(node, "end_lineno", None):
            parts[-1] = parts[-1][:end_col]
        if col is not None:
            parts[0] = parts[0][col:]
        segment = b" ".join(parts).decode("utf-8", "replace")
        text = " ".join(segment.split())
        return text if len(text) <= _SNIPPET_CHARS else text[: _SNIPPET_CHARS - 3] + "..."

    def line_of(self, node: ast.AST) -> int:
        """The 1-based line of ``node`` (1 for nodes without a position)."""
        return int(getattr(node, "lineno", 1) or 1)


def describe(sources: Iterable[Source]) -> str:
    """``world size or rank`` for a message."""
    names = sorted(source.value for source in sources)
    return " or ".join(names) if names else "nothing in particular"


def _node_lines(node: ast.AST) -> set[int]:
    start = getattr(node, "lineno", None)
    if start is None:
        return set()
    end = getattr(node, "end_lineno", None) or start
    return set(range(int(start), int(end) + 1))


def _to_finding(ctx: FileContext, rule: Rule, hit: Hit) -> Finding:
    line = ctx.line_of(hit.node)
    lines = _node_lines(hit.node)
    for node in hit.related:
        lines |= _node_lines(node)
    return Finding(
        rule=rule.info.id,
        severity=hit.severity,
        message=hit.message,
        path=ctx.path,
        location=f"{ctx.path}:{line}",
        evidence={
            "code": ctx.snippet(hit.node),
            "rule": rule.info.title,
            "line": line,
            "column": int(getattr(hit.node, "col_offset", 0) or 0) + 1,
            "sources": sorted(source.value for source in hit.sources),
            "lines": sorted(lines),
        },
    )


def parse_error(path: str, message: str, line: int | None = None) -> Finding:
    """The fail-closed finding for a file that cannot be read, parsed or analysed."""
    line = line or 1
    return Finding(
        rule=PARSE_ERROR,
        severity=Severity.HIGH,
        message=f"cannot lint {path}: {message}; nothing in it was checked",
        path=path,
        location=f"{path}:{line}",
        evidence={"code": "", "rule": "parse error", "line": line, "lines": [line]},
    )


def select_rules(all_rules: Sequence[Rule], selected: Iterable[str] | None) -> list[Rule]:
    """The rules to run: all of them, or the named ids (unknown ids are a usage error)."""
    if selected is None:
        return list(all_rules)
    by_id = {rule.info.id: rule for rule in all_rules}
    chosen: list[Rule] = []
    for rule_id in selected:
        rule = by_id.get(rule_id)
        if rule is None:
            known = ", ".join(sorted(by_id))
            raise LintError(f"unknown lint rule {rule_id!r}; known rules: {known}")
        if rule not in chosen:
            chosen.append(rule)
    return chosen


def lint_text(
    source: str | bytes, path: str, rules: Sequence[Rule]
) -> tuple[list[Finding], FileContext | None]:
    """Lint one source text; a parse or analysis failure becomes a finding."""
    try:
        tree = ast.parse(source, filename=path, type_comments=False)
    except SyntaxError as exc:
        return [parse_error(path, f"syntax error: {exc.msg}", exc.lineno)], None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        return [parse_error(path, f"{type(exc).__name__}: {exc}")], None
    text = source if isinstance(source, str) else _decode(source)
    try:
        ctx = FileContext(path=path, text=text, tree=tree)
    except RecursionError:
        return [parse_error(path, "expressions nested too deeply to analyse")], None
    findings: dict[tuple[str, int], Finding] = {}
    for rule in rules:
        try:
            hits = list(rule.check(ctx))
        except RecursionError:
            findings[(PARSE_ERROR, 0)] = parse_error(
                path, f"rule {rule.info.id} gave up: expressions nested too deeply"
            )
            continue
        for hit in hits:
            # One finding per rule and node: the worst reading wins.
            key = (rule.info.id, id(hit.node))
            finding = _to_finding(ctx, rule, hit)
            old = findings.get(key)
            if old is None or hit.severity.level > old.severity.level:
                findings[key] = finding
    ordered = sorted(
        findings.values(),
        key=lambda f: (int(f.evidence.get("line", 0)), int(f.evidence.get("column", 0)), f.rule),
    )
    return ordered, ctx


_CODING_RE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


def _decode(data: bytes) -> str:
    """Decode source bytes the way Python does (PEP 263 cookie, else UTF-8)."""
    encoding = "utf-8"
    for line in data.splitlines()[:2]:
        match = _CODING_RE.match(line)
        if match:
            encoding = match.group(1).decode("ascii", "replace")
            break
    try:
        return data.decode(encoding, errors="replace")
    except LookupError:
        return data.decode("utf-8", errors="replace")


def iter_python_files(paths: Iterable[str]) -> list[str]:
    """Expand files and directories (recursively, ``*.py``) in a stable order.

    A path named explicitly is linted whatever its extension. Directory symlinks
    are not followed (no loops); virtual environments are skipped.

    Raises:
        LintError: a path does not exist.
    """
    found: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists() and not path.is_symlink():
            raise LintError(f"{raw}: no such file or directory; pass existing files or folders")
        if not path.is_dir():
            found.append(raw)
            continue
        for root, dirs, files in os.walk(raw, followlinks=False):
            dirs[:] = sorted(
                d
                for d in dirs
                if d not in SKIP_DIRS and not (Path(root) / d / "pyvenv.cfg").exists()
            )
            found.extend(str(Path(root) / name) for name in sorted(files) if name.endswith(".py"))
    return found


def read_source(path: str) -> bytes | Finding:
    """The file's bytes, or a fail-closed finding when it cannot be read."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_SOURCE_BYTES:
            return parse_error(path, f"file is {size} bytes, over the {MAX_SOURCE_BYTES} limit")
        return Path(path).read_bytes()
    except OSError as exc:
        return parse_error(path, f"unreadable: {exc.strerror or exc}")


def lint_files(files: Iterable[str], rules: Sequence[Rule]) -> list[Finding]:
    """Lint each file; unreadable or unparsable files become findings."""
    findings: list[Finding] = []
    for path in files:
        data = read_source(path)
        if isinstance(data, Finding):
            findings.append(data)
            continue
        file_findings, _ = lint_text(data, path, rules)
        _logger.debug("%s: %d findings", path, len(file_findings))
        findings.extend(file_findings)
    return findings
