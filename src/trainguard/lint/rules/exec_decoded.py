"""``lint.exec-decoded``: running code that was decoded, fetched or read at run time.

A backdoor that must survive code review hides its payload: ``exec(base64...)``,
``exec(zlib.decompress(...))``, ``eval(requests.get(url).text)``,
``exec(open(path).read())``. Training code has no reason to turn data into code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.aliases import const_str
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo, describe
from trainguard.lint.sources import Source

_CODE_SINKS = frozenset(
    {
        "exec",
        "eval",
        "compile",
        "builtins.exec",
        "builtins.eval",
        "builtins.compile",
        "types.FunctionType",
        "types.CodeType",
        "runpy.run_path",
        "runpy.run_module",
    }
)
_IMPORT_SINKS = frozenset(
    {"__import__", "builtins.__import__", "importlib.import_module", "importlib.__import__"}
)
_HOSTILE = frozenset({Source.DECODED, Source.FETCHED})
_OUTSIDE = frozenset({Source.FILE_READ, Source.ENV})

INFO = RuleInfo(
    id="lint.exec-decoded",
    title="exec of decoded data",
    catches=(
        "exec/eval/compile/types.FunctionType/runpy and __import__/importlib.import_module "
        "whose argument comes from base64/zlib/codecs/bytes.fromhex/marshal/chr()/string "
        "reversal (critical), from requests/urllib/socket data (critical), from a file read "
        "or an environment variable (high), or is otherwise computed (medium; low for imports)"
    ),
    rationale=(
        "The incident's login backdoor relaunched the attacks automatically; payloads that "
        "must survive review are hidden as encoded strings and decoded into code at run time."
    ),
    fix=(
        "Import modules by name in source; keep configuration as data (json/yaml.safe_load) "
        "and dispatch through an explicit table instead of eval."
    ),
    severity="low-critical",
)


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield code execution of dynamic strings."""
    for call in ctx.calls():
        qualname = ctx.resolve(call.func)
        if qualname not in _CODE_SINKS and qualname not in _IMPORT_SINKS:
            continue
        payload = call.args[0] if call.args else None
        if payload is None:
            for keyword in call.keywords:
                if keyword.arg in ("source", "name", "path_name", "mod_name", "code"):
                    payload = keyword.value
        if payload is None or const_str(payload) is not None:
            continue
        if isinstance(payload, ast.Constant):
            continue
        kinds = ctx.flow.taint(payload)
        if kinds & _HOSTILE:
            severity = Severity.CRITICAL
        elif kinds & _OUTSIDE:
            severity = Severity.HIGH
        elif qualname in _IMPORT_SINKS:
            severity = Severity.LOW
        else:
            severity = Severity.MEDIUM
        relevant = kinds & (_HOSTILE | _OUTSIDE)
        origin = f" built from {describe(relevant)}" if relevant else " computed at run time"
        yield Hit(call, severity, f"{qualname} runs code{origin}", relevant)


RULE = Rule(info=INFO, check=check)
