"""``lint.write-outside-run``: training code that writes or deletes outside its run.

The incident altered colleagues' weights and opened a login backdoor. Training
code writes into its own output directory, which it receives as configuration; it
does not write into home directories, ``~/.ssh``, crontabs, ``/etc`` or the Python
installation, and it does not delete absolute paths.

Heuristic (docs/lint.md): only paths the code spells out are judged, through
literals, f-strings, ``os.path.join``/``pathlib`` composition, ``expanduser``,
``Path.home()``, ``$HOME``, ``site.getsitepackages()``, ``sys.prefix`` and
``<module>.__file__``, following local variables. Paths that come from
configuration (``args.output_dir``) are the run directory by definition.
- persistence or credential locations, or the Python installation: critical;
- deleting an absolute or home path (not a temp dir): high;
- writing under the home directory: medium;
- writing to another absolute path (shared storage, not a temp dir): low.
"""

from __future__ import annotations

import ast
import enum
import re
from collections.abc import Iterator

from trainguard.core.findings import Severity
from trainguard.lint.aliases import const_str, last_part
from trainguard.lint.engine import FileContext, Hit, Rule, RuleInfo
from trainguard.lint.shell import command_text, programs


class Place(enum.StrEnum):
    """Where a path points, as far as its spelling tells."""

    ABSOLUTE = "an absolute path"
    HOME = "the home directory"
    TEMP = "a temporary directory"
    SENSITIVE = "a login or persistence location"
    LIBRARY = "the Python installation"


# Prefixes we recognise as temp dirs in linted code; S108 is about creating such paths.
_TEMP_PREFIXES = ("/tmp", "/var/tmp", "/dev/null", "/dev/shm", "/dev/std", "/proc/self")  # noqa: S108
_SENSITIVE = re.compile(
    r"(?:^|/)\.ssh(?:/|$)|authorized_keys|(?:^|/)crontab|(?:^|/)cron\.(?:d|daily|hourly|weekly)"
    r"|/var/spool/cron|^/etc/|(?:^|/)\.(?:bashrc|bash_profile|bash_login|bash_logout|profile"
    r"|zshrc|zprofile|zshenv|netrc|pypirc)$|\.config/autostart|(?:^|/)systemd/|ld\.so\.preload"
    r"|sudoers|pam\.d/|rc\.local|\.git/hooks",
    re.IGNORECASE,
)
_LIBRARY = ("site-packages", "dist-packages", "sitecustomize", "usercustomize", "/lib/python")
_LIBRARY_CALLS = frozenset(
    {
        "site.getsitepackages",
        "site.getusersitepackages",
        "sysconfig.get_paths",
        "sysconfig.get_path",
        "distutils.sysconfig.get_python_lib",
    }
)
_LIBRARY_ATTRS = frozenset({"sys.prefix", "sys.exec_prefix", "sys.base_prefix", "site.USER_SITE"})
_PASS_THROUGH = frozenset(
    {
        "os.path.join",
        "os.path.abspath",
        "os.path.realpath",
        "os.path.normpath",
        "os.path.expandvars",
        "os.path.dirname",
        "os.fspath",
        "str",
        "pathlib.Path",
        "pathlib.PurePath",
        "pathlib.PosixPath",
        "pathlib.PurePosixPath",
    }
)
_PATH_METHODS = frozenset(
    {"joinpath", "with_name", "with_suffix", "with_stem", "resolve", "absolute", "expanduser"}
)
_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")
_MAX_DEPTH = 5

# call -> (indexes of path arguments, keyword names, deletes?)
_WRITE_FUNCS: dict[str, tuple[tuple[int, ...], tuple[str, ...], bool]] = {
    "os.remove": ((0,), ("path",), True),
    "os.unlink": ((0,), ("path",), True),
    "os.rmdir": ((0,), ("path",), True),
    "os.removedirs": ((0,), ("name",), True),
    "shutil.rmtree": ((0,), ("path",), True),
    "os.rename": ((0, 1), ("src", "dst"), True),
    "os.renames": ((0, 1), ("old", "new"), True),
    "os.replace": ((0, 1), ("src", "dst"), True),
    "shutil.move": ((0, 1), ("src", "dst"), True),
    "os.chmod": ((0,), ("path",), False),
    "os.chown": ((0,), ("path",), False),
    "os.lchown": ((0,), ("path",), False),
    "os.truncate": ((0,), ("path",), False),
    "os.symlink": ((1,), ("dst",), False),
    "os.link": ((1,), ("dst",), False),
    "os.mkdir": ((0,), ("path",), False),
    "os.makedirs": ((0,), ("name",), False),
    "os.utime": ((0,), ("path",), False),
    "shutil.copy": ((1,), ("dst",), False),
    "shutil.copy2": ((1,), ("dst",), False),
    "shutil.copyfile": ((1,), ("dst",), False),
    "shutil.copytree": ((1,), ("dst",), False),
    "shutil.chown": ((0,), ("path",), False),
    "torch.save": ((1,), ("f",), False),
    "numpy.save": ((0,), ("file",), False),
    "numpy.savez": ((0,), ("file",), False),
    "numpy.savez_compressed": ((0,), ("file",), False),
    "safetensors.torch.save_file": ((1,), ("filename",), False),
}
_PATH_WRITE_METHODS = frozenset(
    {"write_text", "write_bytes", "touch", "mkdir", "symlink_to", "hardlink_to", "chmod"}
)
_PATH_DELETE_METHODS = frozenset({"unlink", "rmdir"})
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC")

INFO = RuleInfo(
    id="lint.write-outside-run",
    title="write outside the run directory",
    catches=(
        "open(..., 'w'/'a'/'x'/'+'), os.open with write flags, pathlib write/touch/unlink, "
        "os.remove/rename/chmod/symlink, shutil.rmtree/move/copy, torch.save/numpy.save "
        "and shell commands whose path is spelled as a login/persistence location "
        "(~/.ssh, crontab, /etc, shell rc files), the Python installation "
        "(site-packages, sitecustomize, torch.__file__), the home directory, or another "
        "absolute path"
    ),
    rationale=(
        "The incident altered colleagues' weights and installed a login backdoor that "
        "relaunched the attacks. Training code writes only where its configuration says."
    ),
    fix=(
        "Write under the run's configured output directory (args.output_dir); never "
        "write to home, credential, cron or library paths from training code."
    ),
    severity="low-critical",
)


def classify_literal(text: str) -> set[Place]:
    """Places a literal path string points at."""
    places: set[Place] = set()
    lowered = text.lower()
    if _SENSITIVE.search(text):
        places.add(Place.SENSITIVE)
    if any(marker in lowered for marker in _LIBRARY):
        places.add(Place.LIBRARY)
    if text.startswith(_TEMP_PREFIXES):
        places.add(Place.TEMP)
    elif text.startswith("/") or _WINDOWS_ABS.match(text):
        places.add(Place.ABSOLUTE)
    elif text.startswith("~"):
        places.add(Place.HOME)
    return places


def _markers_only(text: str) -> set[Place]:
    """Sensitive or library paths among the words of a shell command."""
    found: set[Place] = set()
    for word in re.split(r"[\s'\"<>|;&]+", text):
        if word:
            found |= classify_literal(word) & {Place.SENSITIVE, Place.LIBRARY}
    return found


def places(ctx: FileContext, node: ast.AST, depth: int = 0) -> set[Place]:
    """Where a path expression points, following variables and path composition."""
    if depth > _MAX_DEPTH:
        return set()
    literal = const_str(node)
    if literal is not None:
        return classify_literal(literal)
    if isinstance(node, ast.Name):
        found: set[Place] = set()
        for value in ctx.flow.values_of(node.id, ctx.flow.scope_of(node)):
            found |= places(ctx, value, depth + 1)
        return found
    if isinstance(node, ast.JoinedStr):
        found = set()
        for index, value in enumerate(node.values):
            inner = value.value if isinstance(value, ast.FormattedValue) else value
            sub = places(ctx, inner, depth + 1)
            found |= sub if index == 0 else sub & {Place.SENSITIVE, Place.LIBRARY}
        return found
    if isinstance(node, ast.BinOp):
        left = places(ctx, node.left, depth + 1)
        right = places(ctx, node.right, depth + 1)
        if isinstance(node.op, ast.Div):  # pathlib: an absolute right side resets the path
            return left | right
        return left | (right & {Place.SENSITIVE, Place.LIBRARY})
    if isinstance(node, ast.Attribute):
        qualname = ctx.resolve(node)
        if qualname in _LIBRARY_ATTRS:
            return {Place.LIBRARY}
        if node.attr == "__file__" and isinstance(node.value, ast.Name | ast.Attribute):
            root = (qualname or "").split(".")[0]
            if root in {v.split(".")[0] for v in ctx.imports.names.values()} and root:
                return {Place.LIBRARY}
        if node.attr in ("parent", "parents"):
            return places(ctx, node.value, depth + 1)
        return set()
    if isinstance(node, ast.Subscript):
        qualname = ctx.resolve(node.value)
        if qualname == "os.environ" and const_str(node.slice) in ("HOME", "XDG_CONFIG_HOME"):
            return {Place.HOME}
        return places(ctx, node.value, depth + 1)
    if isinstance(node, ast.Call):
        return _call_places(ctx, node, depth)
    return set()


def _call_places(ctx: FileContext, node: ast.Call, depth: int) -> set[Place]:
    qualname = ctx.resolve(node.func) or ""
    args = [*node.args, *(k.value for k in node.keywords)]
    if qualname in _LIBRARY_CALLS:
        return {Place.LIBRARY}
    if qualname.startswith("tempfile."):
        return {Place.TEMP}
    if qualname in ("pathlib.Path.home", "pathlib.PosixPath.home") or (
        last_part(qualname) == "home" and not args
    ):
        return {Place.HOME}
    if qualname in ("os.getenv", "os.environ.get") and node.args:
        if const_str(node.args[0]) in ("HOME", "XDG_CONFIG_HOME"):
            return {Place.HOME}
        return set()
    if qualname == "os.path.expanduser":
        found: set[Place] = set()
        for arg in node.args:
            sub = places(ctx, arg, depth + 1)
            found |= ({Place.HOME} | (sub - {Place.HOME})) if Place.HOME in sub else sub
        return found
    if qualname in _PASS_THROUGH or qualname.startswith(("os.path.", "pathlib.")):
        found = set()
        for arg in args:
            found |= places(ctx, arg, depth + 1)
        return found
    if isinstance(node.func, ast.Attribute) and node.func.attr in _PATH_METHODS:
        found = places(ctx, node.func.value, depth + 1)
        for arg in args:
            found |= places(ctx, arg, depth + 1)
        return found
    return set()


def _mode_writes(node: ast.expr | None) -> bool:
    if node is None:
        return False
    mode = const_str(node)
    if mode is None:
        return True  # a computed mode may write; judge the path
    return any(ch in mode for ch in "wax+")


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def _targets(ctx: FileContext, call: ast.Call) -> Iterator[tuple[ast.AST, bool]]:
    """(path expression, deletes?) for each path a call writes or deletes."""
    qualname = ctx.resolve(call.func) or ""
    if qualname in ("open", "io.open", "codecs.open", "builtins.open"):
        path = call.args[0] if call.args else _keyword(call, "file")
        mode = call.args[1] if len(call.args) > 1 else _keyword(call, "mode")
        if path is not None and _mode_writes(mode):
            yield path, False
        return
    if qualname == "os.open" and call.args:
        flags = ast.unparse(call.args[1]) if len(call.args) > 1 else ""
        if any(flag in flags for flag in _WRITE_FLAGS):
            yield call.args[0], False
        return
    spec = _WRITE_FUNCS.get(qualname)
    if spec is not None:
        indexes, names, deletes = spec
        for index in indexes:
            if index < len(call.args):
                yield call.args[index], deletes and index == 0
        for name in names:
            value = _keyword(call, name)
            if value is not None:
                yield value, deletes
        return
    if isinstance(call.func, ast.Attribute):
        method = call.func.attr
        receiver = call.func.value
        if method in _PATH_WRITE_METHODS:
            yield receiver, False
        elif method in _PATH_DELETE_METHODS and not call.args:
            yield receiver, True
        elif method == "open" and _mode_writes(call.args[0] if call.args else None):
            yield receiver, False


def _severity(found: set[Place], deletes: bool) -> Severity | None:
    if found & {Place.SENSITIVE, Place.LIBRARY}:
        return Severity.CRITICAL
    if Place.TEMP in found:
        return None
    if deletes and found & {Place.ABSOLUTE, Place.HOME}:
        return Severity.HIGH
    if Place.HOME in found:
        return Severity.MEDIUM
    if Place.ABSOLUTE in found:
        return Severity.LOW
    return None


def check(ctx: FileContext) -> Iterator[Hit]:
    """Yield writes and deletes whose path points outside the run directory."""
    for call in ctx.calls():
        text = command_text(ctx, call)
        if text is not None:
            found = _markers_only(text)
            if "crontab" in programs(text):
                found.add(Place.SENSITIVE)
            if found:
                where = " and ".join(sorted(p.value for p in found))
                yield Hit(call, Severity.CRITICAL, f"shell command touches {where}")
            continue
        for path, deletes in _targets(ctx, call):
            found = places(ctx, path)
            severity = _severity(found, deletes)
            if severity is None:
                continue
            verb = "deletes" if deletes else "writes"
            where = " and ".join(sorted(p.value for p in found - {Place.TEMP}))
            yield Hit(call, severity, f"{verb} {ctx.snippet(path)} in {where}")


RULE = Rule(info=INFO, check=check)
