"""``env verify``: every installed file against its distribution's RECORD.

Three things are checked for each distribution:

1. every RECORD row: the file exists, has the recorded size and SHA-256;
2. every ``.pyc`` of a verified source: it holds the code that source compiles to
   (:mod:`trainguard.env.pyc`); RECORD has no hash for pycs;
3. every file inside the distribution's package folders (and its ``.dist-info``)
   that RECORD does not list: an injected module.

Work is split into chunks of files and run in a process pool: hashing releases the
GIL but :func:`compile` does not. Every file that cannot be read or verified
becomes a finding; nothing is passed as clean because it was skipped.
"""

from __future__ import annotations

import logging
import os
import posixpath
import pwd
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from trainguard.core.errors import EnvError
from trainguard.core.findings import Finding, Severity
from trainguard.core.progress import NULL_PROGRESS, Progress
from trainguard.env.filecheck import FileOutcome, FileTask, check_chunk
from trainguard.env.interpreter import Interpreter, current_interpreter
from trainguard.env.pyc import PycStatus
from trainguard.env.record import (
    Distribution,
    find_distributions,
    read_record,
    record_abspath,
    select_distributions,
    top_level_name,
)
from trainguard.env.worker import run_in_workers

_logger = logging.getLogger(__name__)

RULE_MODIFIED: Final = "env.modified_file"
"""Finding kind of every file-level problem."""

CODE_SUFFIXES: Final = frozenset(
    {".py", ".pyc", ".pyo", ".pyw", ".so", ".pyd", ".dylib", ".pth", ".sh", ".egg"}
)
"""Suffixes of files the interpreter or loader can run; unlisted ones are high severity."""

INLINE_MAX_FILES: Final = 400
"""Below this many files (and INLINE_MAX_BYTES) no pool is started: startup costs more."""

INLINE_MAX_BYTES: Final = 32 * 1024 * 1024
"""See INLINE_MAX_FILES."""

CHUNK_BYTES: Final = 24 * 1024 * 1024
"""A chunk of work sent to one worker holds about this many bytes..."""

CHUNK_FILES: Final = 256
"""...or this many files, whichever comes first."""

_UNHASHED_OK: Final = frozenset({"RECORD", "RECORD.jws", "RECORD.p7s"})
"""dist-info files that by specification cannot hash themselves."""


@dataclass(frozen=True, slots=True)
class DistResult:
    """Per-distribution summary of a verification."""

    name: str
    """Project name."""
    version: str
    """Installed version."""
    site_dir: str
    """Where it is installed."""
    files: int
    """RECORD files checked."""
    pycs: int
    """Bytecode files compared with their source."""
    bytes: int
    """Bytes read."""
    findings: int
    """Findings about this distribution."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "version": self.version,
            "site_dir": self.site_dir,
            "files": self.files,
            "pycs": self.pycs,
            "bytes": self.bytes,
            "findings": self.findings,
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result of :func:`verify_environment`."""

    interpreter: Interpreter
    """Whose environment was checked."""
    distributions: tuple[DistResult, ...]
    """Every distribution checked."""
    findings: tuple[Finding, ...]
    """Everything wrong, in distribution order."""
    files: int
    """RECORD files checked."""
    pycs: int
    """Bytecode files compared."""
    bytes: int
    """Bytes read and hashed."""
    seconds: float
    """Wall time."""
    digests: Mapping[str, Mapping[str, tuple[str, int]]] = field(default_factory=dict)
    """``dist key -> RECORD path -> (sha256 hex, size)`` of the files as read, when asked."""

    def summary(self) -> dict[str, Any]:
        """Counts for JSON output."""
        return {
            "distributions": len(self.distributions),
            "files": self.files,
            "pycs": self.pycs,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "findings": len(self.findings),
        }


class _Owners:
    """Uid to user name, cached; the file owner is our best guess at who wrote it."""

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {}

    def actor(self, uid: int | None) -> dict[str, Any] | None:
        if uid is None:
            return None
        if uid not in self._names:
            try:
                self._names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._names[uid] = None
        return {"uid": uid, "user": self._names[uid]}


@dataclass(slots=True)
class _Plan:
    """Everything to do for one distribution, and what we learnt while planning."""

    dist: Distribution
    tasks: list[FileTask] = field(default_factory=list)
    record_paths: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    uncompared_pycs: int = 0


def _pyc_source(pyc: Path, cache_tag: str | None) -> tuple[Path, bool] | None:
    """Source path of a ``__pycache__`` file and whether this interpreter loads it."""
    if pyc.parent.name != "__pycache__" or not pyc.name.endswith(".pyc"):
        return None
    parts = pyc.name[: -len(".pyc")].split(".")
    if len(parts) >= 3 and parts[-1].startswith("opt-"):
        parts = parts[:-1]
    if len(parts) < 2:
        return None
    tag = parts[-1]
    stem = ".".join(parts[:-1])
    return pyc.parent.parent / f"{stem}.py", tag == cache_tag


def _finding(
    severity: Severity,
    message: str,
    path: Path | str,
    dist: Distribution | None,
    owners: _Owners,
    *,
    uid: int | None = None,
    mtime: float | None = None,
    **evidence: Any,
) -> Finding:
    ev: dict[str, Any] = {k: v for k, v in evidence.items() if v is not None}
    if dist is not None:
        ev.setdefault("distribution", dist.name)
        ev.setdefault("version", dist.version)
    if mtime is not None:
        ev["mtime"] = mtime
    return Finding(
        rule=RULE_MODIFIED,
        severity=severity,
        message=message,
        path=str(path),
        time=time.time(),
        actor=owners.actor(uid),
        evidence=ev,
    )


def _walk_files(top: Path, errors: list[tuple[str, str]]) -> Iterable[tuple[Path, bool]]:
    """Files under ``top`` (symlinks reported, never followed): ``(path, is_symlink)``."""

    def onerror(exc: OSError) -> None:
        errors.append((str(exc.filename or top), exc.strerror or str(exc)))

    if top.is_symlink() or not top.is_dir():
        yield top, top.is_symlink()
        return
    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror, followlinks=False):
        base = Path(dirpath)
        for name in dirnames:
            sub = base / name
            if sub.is_symlink():
                yield sub, True
        for name in filenames:
            path = base / name
            yield path, path.is_symlink()


def _plan_site_dir(
    site_dir: Path,
    site_dists: Sequence[Distribution],
    chosen: set[Path],
    interp: Interpreter,
    *,
    check_bytecode: bool,
    check_unlisted: bool,
    owners: _Owners,
    stray: list[Finding],
) -> list[_Plan]:
    """Tasks and planning-time findings for the distributions of one site directory."""
    plans: dict[Path, _Plan] = {}
    # Every RECORD in the directory defines ownership, even with a --dist filter:
    # namespace folders (nvidia/, google/) are shared by several distributions.
    listed: dict[str, Distribution] = {}
    folder_owners: dict[str, set[Path]] = defaultdict(set)
    sources: dict[str, tuple[_Plan, int]] = {}
    for dist in site_dists:
        parsed = read_record(dist)
        plan = _Plan(dist)
        if dist.dist_info in chosen:
            plans[dist.dist_info] = plan
        folder_owners[dist.dist_info.name].add(dist.dist_info)
        if parsed is None:
            plan.findings.append(
                _finding(
                    Severity.MEDIUM,
                    f"{dist.name} {dist.version}: no RECORD in {dist.dist_info.name}; its files "
                    "cannot be verified",
                    dist.dist_info,
                    dist,
                    owners,
                )
            )
            continue
        entries, problems = parsed
        for problem in problems[:20]:
            plan.findings.append(
                _finding(
                    Severity.HIGH,
                    f"{dist.name} {dist.version}: RECORD row {problem.line} unusable: "
                    f"{problem.reason}",
                    dist.record_path,
                    dist,
                    owners,
                    line=problem.line,
                )
            )
        if len(problems) > 20:
            plan.findings.append(
                _finding(
                    Severity.HIGH,
                    f"{dist.name}: {len(problems) - 20} more unusable RECORD rows",
                    dist.record_path,
                    dist,
                    owners,
                )
            )
        record_self = f"{dist.dist_info.name}/"
        for entry in entries:
            abspath = record_abspath(site_dir, entry.path)
            key = str(abspath)
            if key in listed:
                continue
            listed[key] = dist
            top = top_level_name(entry.path)
            if top is not None:
                folder_owners[top].add(dist.dist_info)
            if dist.dist_info not in chosen:
                continue
            rel = posixpath.normpath(entry.path)
            if rel.startswith(record_self) and rel[len(record_self) :] in _UNHASHED_OK:
                continue
            if entry.digest_hex is None and _pyc_source(abspath, interp.cache_tag) is not None:
                # pip lists the pycs it compiled without a hash; the walk below finds
                # them again and attaches them to their source for comparison.
                continue
            task = FileTask(len(plan.tasks), key, entry.algorithm, entry.digest_hex, entry.size, ())
            plan.tasks.append(task)
            plan.record_paths.append(entry.path)
            if key.endswith(".py"):
                sources[key] = (plan, task.slot)
    # Bytecode of verified sources: listed by pip, or written later by imports.
    pycs: dict[str, list[str]] = defaultdict(list)
    walk_errors: list[tuple[str, str]] = []
    tops: list[Path] = []
    for name, dist_infos in folder_owners.items():
        if dist_infos & chosen:
            tops.append(site_dir / name)
    if any(d.dist_info in chosen for d in site_dists):
        tops.append(site_dir / "__pycache__")
    for top_dir in sorted(set(tops)):
        if not top_dir.exists() and not top_dir.is_symlink():
            continue
        owner_infos = folder_owners.get(top_dir.name, set())
        owner_names = sorted({d.name for d in site_dists if d.dist_info in owner_infos}) or [
            "no distribution"
        ]
        for path, is_link in _walk_files(top_dir, walk_errors):
            key = str(path)
            pyc = None if is_link else _pyc_source(path, interp.cache_tag)
            if pyc is not None:
                source, loadable = pyc
                if str(source) in listed:
                    # Bytecode of a listed source. Another tag is never loaded by this
                    # interpreter; this tag is compared with the verified source.
                    if loadable and str(source) in sources:
                        pycs[str(source)].append(key)
                    continue
                if key in listed:
                    continue
                # A pyc with no source is never loaded from __pycache__ (PEP 3147),
                # but nothing legitimate leaves it there either.
                if check_unlisted:
                    stray.append(
                        _finding(
                            Severity.LOW,
                            f"bytecode without a source in {', '.join(owner_names)}: {path}",
                            path,
                            None,
                            owners,
                            owners_of_folder=owner_names,
                        )
                    )
                continue
            if key in listed or not check_unlisted:
                continue
            in_cache = path.parent.name == "__pycache__"
            code_like = is_link or path.suffix in CODE_SUFFIXES or path.name == "entry_points.txt"
            severity = Severity.HIGH if code_like and not in_cache else Severity.MEDIUM
            try:
                st = path.lstat()
                uid: int | None = st.st_uid
                mtime: float | None = st.st_mtime
            except OSError:
                uid = mtime = None
            what = "symlink" if is_link else "file"
            stray.append(
                _finding(
                    severity,
                    f"{what} not listed in any RECORD inside {', '.join(owner_names)}: {path}",
                    path,
                    None,
                    owners,
                    uid=uid,
                    mtime=mtime,
                    owners_of_folder=owner_names,
                    reason="unlisted",
                )
            )
    for where, why in walk_errors:
        stray.append(
            _finding(
                Severity.HIGH,
                f"cannot list {where}: {why}; files there are not verified",
                where,
                None,
                owners,
                reason="unreadable",
            )
        )
    for source_key, pyc_list in pycs.items():
        plan, index = sources[source_key]
        if not check_bytecode:
            continue
        if interp.is_current:
            task = plan.tasks[index]
            plan.tasks[index] = task._replace(pycs=tuple(sorted(set(pyc_list))))
        else:
            plan.uncompared_pycs += len(set(pyc_list))
    return list(plans.values())


def _top_level_strays(
    site_dir: Path, site_dists: Sequence[Distribution], owners: _Owners, stray: list[Finding]
) -> None:
    """Top-level files and folders of a site directory that no distribution owns."""
    owned: set[str] = set()
    for dist in site_dists:
        owned.add(dist.dist_info.name)
        parsed = read_record(dist)
        if parsed is None:
            continue
        for entry in parsed[0]:
            top = top_level_name(entry.path)
            if top is not None:
                owned.add(top)
    try:
        names = sorted(os.listdir(site_dir))  # noqa: PTH208 - names, not paths
    except OSError as exc:
        stray.append(
            _finding(
                Severity.HIGH,
                f"cannot list {site_dir}: {exc.strerror}",
                site_dir,
                None,
                owners,
            )
        )
        return
    for name in names:
        if name in owned or name == "__pycache__" or name.endswith(".pth"):
            # .pth files are judged by the start-up check, which knows their owners.
            continue
        path = site_dir / name
        if name.endswith((".egg-info", ".egg-link")):
            stray.append(
                _finding(
                    Severity.LOW,
                    f"legacy install {name} has no RECORD; its files cannot be verified",
                    path,
                    None,
                    owners,
                )
            )
            continue
        if path.is_dir() and not path.is_symlink():
            has_files = False
            for _dirpath, _dirs, files in os.walk(path):
                if files:
                    has_files = True
                    break
            if not has_files:
                continue  # empty folders left by uninstalls carry nothing
        try:
            st = path.lstat()
            uid: int | None = st.st_uid
            mtime: float | None = st.st_mtime
        except OSError:
            uid = mtime = None
        code_like = path.is_dir() or path.suffix in CODE_SUFFIXES or path.is_symlink()
        stray.append(
            _finding(
                Severity.HIGH if code_like else Severity.MEDIUM,
                f"{name} in {site_dir} belongs to no installed distribution",
                path,
                None,
                owners,
                uid=uid,
                mtime=mtime,
                reason="unowned",
            )
        )


def _chunks(tasks: Sequence[tuple[int, FileTask]]) -> list[list[tuple[int, FileTask]]]:
    out: list[list[tuple[int, FileTask]]] = []
    current: list[tuple[int, FileTask]] = []
    size = 0
    for item in tasks:
        current.append(item)
        size += item[1].expected_size or 0
        if size >= CHUNK_BYTES or len(current) >= CHUNK_FILES:
            out.append(current)
            current, size = [], 0
    if current:
        out.append(current)
    return out


def _run_tasks(
    plans: Sequence[_Plan], jobs: int, progress: Progress
) -> dict[tuple[int, int], FileOutcome]:
    """Run every task; returns outcomes keyed by (plan index, task index)."""
    flat: list[tuple[int, FileTask]] = [
        (p, task) for p, plan in enumerate(plans) for task in plan.tasks
    ]
    total_bytes = sum(task.expected_size or 0 for _, task in flat)
    progress.start("verifying installed files", total_bytes or None)
    results: dict[tuple[int, int], FileOutcome] = {}

    def store(chunk_index: int, outcomes: list[FileOutcome]) -> None:
        chunk = chunks[chunk_index]
        for (p, _), outcome in zip(chunk, outcomes, strict=True):
            results[(p, outcome.slot)] = outcome
            progress.advance(outcome.actual_size or 0)

    try:
        chunks = _chunks(flat)
        inline = jobs <= 1 or (len(flat) < INLINE_MAX_FILES and total_bytes < INLINE_MAX_BYTES)
        remaining = list(range(len(chunks)))
        if not inline:
            remaining = run_in_workers(
                [[task for _, task in chunk] for chunk in chunks],
                min(jobs, len(chunks)),
                store,
            )
        for index in remaining:
            store(index, check_chunk([task for _, task in chunks[index]]))
        return results
    finally:
        progress.finish()


def _outcome_findings(
    plan: _Plan, outcome: FileOutcome, owners: _Owners
) -> tuple[list[Finding], int]:
    dist = plan.dist
    task = plan.tasks[outcome.slot]
    record_path = plan.record_paths[outcome.slot]
    found: list[Finding] = []
    common: dict[str, Any] = {
        "record_path": record_path,
        "expected_sha256": task.expected_hex,
        "actual_sha256": outcome.actual_hex,
        "expected_size": task.expected_size,
        "actual_size": outcome.actual_size,
    }
    state = outcome.state
    if state == "changed" or state == "not_regular":
        found.append(
            _finding(
                Severity.HIGH,
                f"{dist.name} {dist.version}: {record_path} was modified ({outcome.detail})",
                task.path,
                dist,
                owners,
                uid=outcome.uid,
                mtime=outcome.mtime,
                reason=state,
                **common,
            )
        )
    elif state == "missing":
        found.append(
            _finding(
                Severity.MEDIUM,
                f"{dist.name} {dist.version}: {record_path} is missing",
                task.path,
                dist,
                owners,
                reason="missing",
                **common,
            )
        )
    elif state == "unreadable":
        found.append(
            _finding(
                Severity.HIGH,
                f"{dist.name} {dist.version}: cannot read {record_path} ({outcome.detail}); "
                "not verified",
                task.path,
                dist,
                owners,
                uid=outcome.uid,
                mtime=outcome.mtime,
                reason="unreadable",
                **common,
            )
        )
    elif state in ("nohash", "unsupported"):
        found.append(
            _finding(
                Severity.LOW,
                f"{dist.name} {dist.version}: {record_path} cannot be verified ({outcome.detail})",
                task.path,
                dist,
                owners,
                uid=outcome.uid,
                mtime=outcome.mtime,
                reason=state,
                **common,
            )
        )
    compared = 0
    for pyc in outcome.pycs:
        if pyc.status == PycStatus.MATCH.value:
            compared += 1
            continue
        if pyc.status == "skipped":
            continue
        compared += pyc.status != "unreadable"
        severity, text = {
            PycStatus.DIFFERS.value: (
                Severity.HIGH,
                "bytecode does not match its verified source (edited .pyc)",
            ),
            PycStatus.STALE.value: (
                Severity.LOW,
                "stale bytecode differs from its source; the importer ignores and rewrites it",
            ),
            PycStatus.MALFORMED.value: (Severity.HIGH, "malformed bytecode file"),
            PycStatus.OTHER_INTERPRETER.value: (
                Severity.MEDIUM,
                "bytecode built for another interpreter sits under this interpreter's tag",
            ),
            "unreadable": (Severity.HIGH, "cannot read bytecode file; not verified"),
        }.get(pyc.status, (Severity.HIGH, f"bytecode check failed ({pyc.status})"))
        found.append(
            _finding(
                severity,
                f"{dist.name} {dist.version}: {pyc.path}: {text}"
                + (f" ({pyc.detail})" if pyc.detail else ""),
                pyc.path,
                dist,
                owners,
                uid=pyc.uid,
                mtime=pyc.mtime,
                reason=f"pyc_{pyc.status}",
                source=task.path,
                pyc_filename=pyc.pyc_filename,
            )
        )
    return found, compared


def verify_environment(
    interpreter: Interpreter | None = None,
    *,
    dists: Sequence[str] | None = None,
    jobs: int | None = None,
    check_bytecode: bool = True,
    check_unlisted: bool = True,
    collect_digests: bool = False,
    progress: Progress = NULL_PROGRESS,
) -> VerifyReport:
    """Verify installed distributions against their RECORDs.

    Args:
        interpreter: Whose environment (default: the running one).
        dists: Only these distribution names (PEP 503 normalised match).
        jobs: Worker processes (default: CPU count); 1 runs in this process.
        check_bytecode: Compare ``.pyc`` files with their verified source.
        check_unlisted: Report files inside package folders that no RECORD lists.
        collect_digests: Keep the digest of every file read (for snapshots).
        progress: Observer of the hashing progress (bytes).

    Returns:
        The report; findings are ``env.modified_file``.

    Raises:
        EnvError: A name in ``dists`` is not installed.
    """
    started = time.perf_counter()
    interp = interpreter or current_interpreter()
    owners = _Owners()
    path_dirs = interp.path_dirs()
    all_dists = list(find_distributions(path_dirs))
    try:
        selected = select_distributions(all_dists, dists)
    except KeyError as exc:
        raise EnvError(
            f"no installed distribution named {exc.args[0]!r} on {interp.executable}'s sys.path; "
            "check the name with `pip list`"
        ) from exc
    chosen = {dist.dist_info for dist in selected}
    by_site: dict[Path, list[Distribution]] = defaultdict(list)
    for dist in all_dists:
        by_site[dist.site_dir].append(dist)
    plans: list[_Plan] = []
    stray: list[Finding] = []
    for site_dir, site_dists in by_site.items():
        if not any(d.dist_info in chosen for d in site_dists):
            continue
        plans.extend(
            _plan_site_dir(
                site_dir,
                site_dists,
                chosen,
                interp,
                check_bytecode=check_bytecode,
                check_unlisted=check_unlisted,
                owners=owners,
                stray=stray,
            )
        )
        if check_unlisted and not dists:
            _top_level_strays(site_dir, site_dists, owners, stray)
    if check_unlisted and not dists:
        # Site directories without any distribution still run what is dropped there.
        for site_dir in interp.site_dirs():
            if site_dir not in by_site:
                _top_level_strays(site_dir, [], owners, stray)
    workers = jobs if jobs is not None else (os.cpu_count() or 1)
    outcomes = _run_tasks(plans, max(1, workers), progress)
    findings: list[Finding] = []
    results: list[DistResult] = []
    digests: dict[str, dict[str, tuple[str, int]]] = {}
    total_files = total_pycs = total_bytes = 0
    for p, plan in enumerate(plans):
        dist_findings = list(plan.findings)
        pycs = read = 0
        dist_digests: dict[str, tuple[str, int]] = {}
        for task in plan.tasks:
            outcome = outcomes[(p, task.slot)]
            found, compared = _outcome_findings(plan, outcome, owners)
            dist_findings.extend(found)
            pycs += compared
            read += outcome.bytes_read
            if collect_digests and outcome.actual_hex is not None:
                dist_digests[plan.record_paths[task.slot]] = (
                    outcome.actual_hex,
                    outcome.actual_size or 0,
                )
        if plan.uncompared_pycs:
            dist_findings.append(
                _finding(
                    Severity.LOW,
                    f"{plan.dist.name} {plan.dist.version}: {plan.uncompared_pycs} bytecode files "
                    f"not compared: {interp.executable} is not the interpreter running trainguard",
                    plan.dist.dist_info,
                    plan.dist,
                    owners,
                    reason="pyc_not_compared",
                )
            )
        if collect_digests:
            digests[plan.dist.key] = dist_digests
        findings.extend(dist_findings)
        results.append(
            DistResult(
                plan.dist.name,
                plan.dist.version,
                str(plan.dist.site_dir),
                len(plan.tasks),
                pycs,
                read,
                len(dist_findings),
            )
        )
        total_files += len(plan.tasks)
        total_pycs += pycs
        total_bytes += read
    findings.extend(stray)
    return VerifyReport(
        interpreter=interp,
        distributions=tuple(results),
        findings=tuple(findings),
        files=total_files,
        pycs=total_pycs,
        bytes=total_bytes,
        seconds=time.perf_counter() - started,
        digests=digests,
    )
