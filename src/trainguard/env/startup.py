"""Start-up injection: code that runs in every interpreter before the training script.

Checked vectors (``env.startup_injection``):

- ``.pth`` files in site directories: lines starting with ``import`` are executed
  at every start, imported or not (the LiteLLM 1.82.8 ``litellm_init.pth`` attack).
  Known legitimate ones (setuptools' ``distutils-precedence.pth``, editable-install
  finders, namespace ``-nspkg.pth``) are reported at low severity with their owner,
  when RECORD lists them with the same digest; everything else is high.
- ``sitecustomize`` / ``usercustomize`` anywhere on sys.path;
- environment variables: ``PYTHONSTARTUP``, ``PYTHONPATH``, ``PYTHONHOME``,
  ``PYTHONINSPECT``, ``PYTHONWARNINGS`` naming a module (its category is imported),
  ``PYTHONBREAKPOINT``, ``PYTHONPYCACHEPREFIX``, ``PYTHONUSERBASE``,
  ``LD_PRELOAD``, ``LD_AUDIT``, ``LD_LIBRARY_PATH``; and ``/etc/ld.so.preload``;
- sys.path directories ahead of site-packages that others can write (group or
  world writable): anyone who can write there shadows ``torch``.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trainguard.core.findings import Finding, Severity
from trainguard.core.hashing import sha256_bytes
from trainguard.env.interpreter import Interpreter, current_interpreter
from trainguard.env.record import Distribution, find_distributions, read_record, record_abspath

_logger = logging.getLogger(__name__)

RULE: Final = "env.startup_injection"
"""The finding kind of every start-up vector."""

MAX_PTH_BYTES: Final = 4 * 1024 * 1024
"""Largest .pth read (LiteLLM's was 34 KB); bigger is reported unread."""

KNOWN_PTH: Final[Mapping[str, frozenset[str] | None]] = {
    "distutils-precedence.pth": frozenset({"setuptools"}),
    "__editable__.*.pth": None,
    "_editable_impl_*.pth": None,
    "__editable___*.pth": None,
    "*-nspkg.pth": None,
    "_virtualenv.pth": frozenset({"virtualenv", ""}),
    "pywin32.pth": frozenset({"pywin32"}),
    "a1_coverage.pth": frozenset({"coverage"}),
}
"""Name patterns of .pth files with import lines that are normal, and their expected owners
(None: any distribution, but one must own it). ``""`` means "no distribution" is fine."""

_ENV_VECTORS: Final[Mapping[str, tuple[Severity, str]]] = {
    "PYTHONSTARTUP": (Severity.MEDIUM, "runs this file in every interactive interpreter"),
    "PYTHONHOME": (Severity.HIGH, "replaces the standard library location"),
    "PYTHONINSPECT": (Severity.LOW, "drops into an interactive prompt after the script"),
    "PYTHONPYCACHEPREFIX": (
        Severity.MEDIUM,
        "moves bytecode to another tree that env verify does not compare",
    ),
    "PYTHONUSERBASE": (Severity.MEDIUM, "moves the user site (its .pth files run at start-up)"),
    "PYTHONPLATLIBDIR": (Severity.MEDIUM, "changes where the platform library is looked up"),
    "PYTHONEXECUTABLE": (Severity.MEDIUM, "changes sys.executable (honoured even under -I)"),
    "LD_PRELOAD": (Severity.HIGH, "loads these libraries into every dynamically linked process"),
    "LD_AUDIT": (Severity.HIGH, "loads these rtld-audit libraries into every process"),
}

_SAFE_WARNING_MODULES: Final = frozenset({"", "builtins", "warnings"})


@dataclass(frozen=True, slots=True)
class _Owner:
    dist: Distribution
    digest_hex: str | None


def _owners(site_dirs: Iterable[Path]) -> dict[str, _Owner]:
    """Absolute path -> the distribution whose RECORD lists it (with the expected digest)."""
    out: dict[str, _Owner] = {}
    for dist in find_distributions(site_dirs):
        parsed = read_record(dist)
        if parsed is None:
            continue
        for entry in parsed[0]:
            out.setdefault(
                str(record_abspath(dist.site_dir, entry.path)),
                _Owner(dist, entry.digest_hex if entry.algorithm == "sha256" else None),
            )
    return out


def _stat_evidence(path: Path) -> dict[str, Any]:
    try:
        st = path.lstat()
    except OSError:
        return {}
    return {"owner_uid": st.st_uid, "mtime": st.st_mtime, "mode": oct(stat.S_IMODE(st.st_mode))}


def _finding(
    severity: Severity, message: str, path: str | None, vector: str, **evidence: Any
) -> Finding:
    actor = None
    if "owner_uid" in evidence:
        actor = {"uid": evidence["owner_uid"]}
    return Finding(
        rule=RULE,
        severity=severity,
        message=message,
        path=path,
        time=time.time(),
        actor=actor,
        evidence={"vector": vector, **{k: v for k, v in evidence.items() if v is not None}},
    )


def _known_pth(name: str, owner: str | None) -> bool:
    for pattern, owners in KNOWN_PTH.items():
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        if owners is None:
            return owner is not None
        return (owner or "") in owners
    return False


def executable_pth_lines(text: str) -> list[tuple[int, str]]:
    """Lines ``site`` would ``exec``: those starting with ``import`` + space or tab."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(("import ", "import\t")):
            out.append((number, line))
    return out


def check_pth_files(site_dirs: Iterable[Path], owners: Mapping[str, _Owner]) -> list[Finding]:
    """Executable lines of ``.pth`` files in the site directories."""
    findings: list[Finding] = []
    for site_dir in site_dirs:
        try:
            names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth"))  # noqa: PTH208
        except OSError as exc:
            findings.append(
                _finding(
                    Severity.HIGH,
                    f"cannot list {site_dir} ({exc.strerror}); its .pth files are not checked",
                    str(site_dir),
                    "pth",
                )
            )
            continue
        for name in names:
            path = site_dir / name
            findings.extend(_check_pth(path, owners.get(str(path))))
    return findings


def _check_pth(path: Path, owner: _Owner | None) -> list[Finding]:
    evidence = _stat_evidence(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PTH_BYTES + 1)
    except OSError as exc:
        return [
            _finding(
                Severity.HIGH,
                f"cannot read {path} ({exc.strerror}); it may run code at start-up",
                str(path),
                "pth",
                **evidence,
            )
        ]
    if len(data) > MAX_PTH_BYTES:
        return [
            _finding(
                Severity.HIGH,
                f"{path} is larger than {MAX_PTH_BYTES} bytes; not read, assumed to run code",
                str(path),
                "pth",
                **evidence,
            )
        ]
    text = data.decode("utf-8", errors="replace")
    lines = executable_pth_lines(text)
    if not lines:
        return []
    digest = sha256_bytes(data)
    owner_name = owner.dist.name if owner else None
    hidden = path.name.startswith(".")
    tampered = owner is not None and owner.digest_hex is not None and owner.digest_hex != digest
    known = _known_pth(path.name, owner_name) and not tampered and not hidden
    if known:
        severity = Severity.LOW
        why = f"known start-up hook of {owner_name or 'the environment'}"
    elif tampered:
        severity = Severity.HIGH
        why = f"owned by {owner_name} but its content differs from RECORD"
    elif owner is not None:
        severity = Severity.HIGH
        why = f"shipped by {owner.dist.name} {owner.dist.version}, not a known start-up hook"
    else:
        severity = Severity.HIGH
        why = "no installed distribution owns it"
    first_number, first_line = lines[0]
    shown = first_line if len(first_line) <= 160 else first_line[:157] + "..."
    return [
        _finding(
            severity,
            f"{path}: {len(lines)} line(s) executed at every interpreter start ({why}); "
            f"line {first_number}: {shown}",
            str(path),
            "pth",
            distribution=owner_name,
            version=owner.dist.version if owner else None,
            sha256=digest,
            lines=[number for number, _ in lines][:50],
            hidden=hidden or None,
            **evidence,
        )
    ]


def check_customize(interp: Interpreter, owners: Mapping[str, _Owner]) -> list[Finding]:
    """``sitecustomize`` and ``usercustomize`` modules anywhere on sys.path."""
    findings: list[Finding] = []
    for directory in interp.path_dirs():
        try:
            names = sorted(os.listdir(directory))  # noqa: PTH208
        except OSError:
            continue
        for name in names:
            module = name.split(".", 1)[0]
            if module not in ("sitecustomize", "usercustomize"):
                continue
            path = directory / name
            if path.is_dir() and not (path / "__init__.py").exists():
                continue
            if name.endswith(".pth"):
                continue
            evidence = _stat_evidence(path)
            owner = owners.get(str(path))
            distro = (
                evidence.get("owner_uid") == 0
                and not (int(evidence.get("mode", "0o0"), 8) & (stat.S_IWGRP | stat.S_IWOTH))
                and str(directory).startswith(interp.base_prefix)
                and owner is None
            )
            severity = Severity.MEDIUM if distro else Severity.HIGH
            note = " (root-owned, in the base installation)" if distro else ""
            findings.append(
                _finding(
                    severity,
                    f"{path}: {module} is imported at every interpreter start{note}",
                    str(path),
                    module,
                    distribution=owner.dist.name if owner else None,
                    **evidence,
                )
            )
    return findings


def _warning_modules(value: str) -> list[str]:
    modules = []
    for spec in value.split(","):
        fields = spec.strip().split(":")
        if len(fields) >= 3:
            category = fields[2].strip()
            module, _, _ = category.rpartition(".")
            if module not in _SAFE_WARNING_MODULES:
                modules.append(module)
    return modules


def _dir_writable_by_others(path: Path) -> bool | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def check_environment_variables(environ: Mapping[str, str]) -> list[Finding]:
    """Interpreter and loader variables that inject code or redirect imports."""
    findings: list[Finding] = []
    for name, (severity, why) in _ENV_VECTORS.items():
        value = environ.get(name)
        if value:
            findings.append(
                _finding(severity, f"{name}={value[:200]}: {why}", None, "env", variable=name)
            )
    pythonpath = environ.get("PYTHONPATH")
    if pythonpath:
        entries = [e for e in pythonpath.split(os.pathsep) if e]
        risky = [e for e in entries if _dir_writable_by_others(Path(e)) is not False]
        severity = Severity.HIGH if risky else Severity.MEDIUM
        detail = f"; missing or writable by others: {', '.join(risky)}" if risky else ""
        findings.append(
            _finding(
                severity,
                f"PYTHONPATH puts {len(entries)} directories ahead of site-packages{detail}",
                None,
                "env",
                variable="PYTHONPATH",
                entries=entries,
                risky=risky or None,
            )
        )
    warnings_value = environ.get("PYTHONWARNINGS")
    if warnings_value:
        modules = _warning_modules(warnings_value)
        if modules:
            findings.append(
                _finding(
                    Severity.HIGH,
                    f"PYTHONWARNINGS names categories in {', '.join(modules)}: the interpreter "
                    "imports them at start-up",
                    None,
                    "env",
                    variable="PYTHONWARNINGS",
                    modules=modules,
                )
            )
    breakpoint_hook = environ.get("PYTHONBREAKPOINT")
    if breakpoint_hook and breakpoint_hook not in ("0", "pdb.set_trace"):
        findings.append(
            _finding(
                Severity.MEDIUM,
                f"PYTHONBREAKPOINT={breakpoint_hook[:200]}: breakpoint() imports and calls it",
                None,
                "env",
                variable="PYTHONBREAKPOINT",
            )
        )
    library_path = environ.get("LD_LIBRARY_PATH")
    if library_path:
        entries = [e for e in library_path.split(":") if e]
        risky = [e for e in entries if _dir_writable_by_others(Path(e)) is not False]
        findings.append(
            _finding(
                Severity.HIGH if risky else Severity.LOW,
                "LD_LIBRARY_PATH searches "
                + ", ".join(entries[:10])
                + (f" first; missing or writable by others: {', '.join(risky)}" if risky else ""),
                None,
                "env",
                variable="LD_LIBRARY_PATH",
                entries=entries,
                risky=risky or None,
            )
        )
    return findings


def check_ld_so_preload(path: Path = Path("/etc/ld.so.preload")) -> list[Finding]:
    """Libraries the dynamic loader injects into every process on this host."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [
            _finding(
                Severity.MEDIUM,
                f"cannot read {path} ({exc.strerror}); preloaded libraries unknown",
                str(path),
                "ld_so_preload",
            )
        ]
    # glibc splits on whitespace and ':' and knows no comments: every token counts.
    libraries = data.decode("utf-8", errors="replace").replace(":", " ").split()
    if not libraries:
        return []
    return [
        _finding(
            Severity.HIGH,
            f"{path} preloads {', '.join(libraries[:5])} into every process",
            str(path),
            "ld_so_preload",
            libraries=libraries[:50],
            **_stat_evidence(path),
        )
    ]


def check_writable_path(interp: Interpreter, current_uid: int | None = None) -> list[Finding]:
    """sys.path directories ahead of site-packages that others can write or own."""
    uid = os.getuid() if current_uid is None else current_uid
    site_dirs = {p.resolve() for p in interp.site_dirs()}
    findings: list[Finding] = []
    for directory in interp.path_dirs():
        is_site = directory.resolve() in site_dirs
        try:
            st = directory.stat()
        except OSError:
            continue
        writable = bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
        foreign = st.st_uid not in (0, uid)
        where = "site directory" if is_site else "directory ahead of site-packages"
        if writable:
            who = "everyone" if st.st_mode & stat.S_IWOTH else "its group"
            findings.append(
                _finding(
                    Severity.MEDIUM if is_site else Severity.HIGH,
                    f"{directory}: sys.path {where} is writable by {who}; anyone there can "
                    "shadow or replace modules",
                    str(directory),
                    "writable_path",
                    **_stat_evidence(directory),
                )
            )
        elif foreign and not is_site:
            findings.append(
                _finding(
                    Severity.MEDIUM,
                    f"{directory}: sys.path {where} belongs to uid {st.st_uid}, who can shadow "
                    "modules",
                    str(directory),
                    "writable_path",
                    **_stat_evidence(directory),
                )
            )
        if is_site:
            # Only what comes before site-packages can shadow it; the rest is checked
            # by env verify (files against RECORD).
            break
    return findings


def check_startup(
    interpreter: Interpreter | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    ld_so_preload: Path = Path("/etc/ld.so.preload"),
) -> list[Finding]:
    """Every start-up injection vector of an interpreter (default: the running one).

    Args:
        interpreter: Whose site directories and sys.path to check.
        environ: Environment variables to judge (default: ``os.environ``).
        ld_so_preload: The host's preload file (a fixture path in tests).

    Returns:
        ``env.startup_injection`` findings.
    """
    interp = interpreter or current_interpreter()
    env = os.environ if environ is None else environ
    site_dirs = interp.site_dirs()
    owners = _owners(interp.path_dirs())
    findings = check_pth_files(site_dirs, owners)
    findings.extend(check_customize(interp, owners))
    findings.extend(check_environment_variables(env))
    findings.extend(check_ld_so_preload(ld_so_preload))
    findings.extend(check_writable_path(interp))
    return findings
