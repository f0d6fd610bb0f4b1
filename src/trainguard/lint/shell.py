"""What a subprocess or ``os.system`` call would run, as far as literals tell.

``subprocess.run(["pkill", "-f", "train.py"])``, ``os.system("scancel " + job)`` and
``cmd = "curl ..."; os.system(cmd)`` all hide a kill or a network call behind a
string. These helpers collect the literal fragments of the command (following a
local variable to its assigned values) and split them into program names.
"""

from __future__ import annotations

import ast
import re

from trainguard.lint.engine import FileContext

SHELL_CALLS = frozenset(
    {
        "os.system",
        "os.popen",
        "os.execl",
        "os.execle",
        "os.execlp",
        "os.execlpe",
        "os.execv",
        "os.execve",
        "os.execvp",
        "os.execvpe",
        "os.spawnl",
        "os.spawnle",
        "os.spawnlp",
        "os.spawnlpe",
        "os.spawnv",
        "os.spawnve",
        "os.spawnvp",
        "os.spawnvpe",
        "os.posix_spawn",
        "os.posix_spawnp",
        "subprocess.run",
        "subprocess.call",
        "subprocess.check_call",
        "subprocess.check_output",
        "subprocess.Popen",
        "subprocess.getoutput",
        "subprocess.getstatusoutput",
        "pty.spawn",
        "asyncio.create_subprocess_exec",
        "asyncio.create_subprocess_shell",
        "commands.getoutput",
        "pexpect.spawn",
        "pexpect.run",
        "sh.Command",
    }
)
_SPLIT = re.compile(r"[\s;|&()`'\"<>$]+")
_PIPE_TO_SHELL = re.compile(r"\|\s*(?:sudo\s+)?(?:/\S*/)?(?:ba|z|da|k)?sh\b")
_MAX_DEPTH = 4


def _fragments(ctx: FileContext, node: ast.AST, depth: int, out: list[str]) -> None:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        value = node.value
        out.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    elif isinstance(node, ast.Name):
        for assigned in ctx.flow.values_of(node.id, ctx.flow.scope_of(node)):
            _fragments(ctx, assigned, depth + 1, out)
    elif isinstance(node, ast.JoinedStr | ast.List | ast.Tuple | ast.BinOp | ast.FormattedValue):
        for child in ast.iter_child_nodes(node):
            _fragments(ctx, child, depth, out)
    elif isinstance(node, ast.Call):
        # " ".join([...]), shlex.split("..."), str.format(...) and friends.
        if isinstance(node.func, ast.Attribute):
            _fragments(ctx, node.func.value, depth, out)
        for arg in node.args:
            _fragments(ctx, arg, depth, out)


def command_text(ctx: FileContext, call: ast.Call) -> str | None:
    """The literal text of the command a process-spawning call runs, or None."""
    if ctx.resolve(call.func) not in SHELL_CALLS:
        return None
    parts: list[str] = []
    for arg in call.args:
        _fragments(ctx, arg, 0, parts)
    for keyword in call.keywords:
        if keyword.arg in ("args", "cmd", "command", "argv", "path", "file"):
            _fragments(ctx, keyword.value, 0, parts)
    return " ".join(parts)


def programs(text: str) -> set[str]:
    """Program-like words in a command (basenames, lower-case)."""
    words = set()
    for token in _SPLIT.split(text):
        if token:
            words.add(token.rsplit("/", 1)[-1].lower())
    return words


def pipes_to_shell(text: str) -> bool:
    """``curl ... | sh``: fetched text run as code."""
    return bool(_PIPE_TO_SHELL.search(text))
