"""``host check``: compare the host with its baseline and name every new, changed
or removed login and persistence entry.

Decisions:

- Line-oriented files (authorized_keys, crontabs, sudoers, PAM, rc files, units)
  are compared line by line, so a report names the key or line that was added.
  A new file is one finding (its first lines in the evidence), not one per line.
- Comment-only and whitespace-only edits are not reported: a comment cannot log
  anyone in or run anything. The exceptions are where a "comment" is a directive
  (sudoers ``#include``) or where the format has no comments (ld.so.preload).
- Owner and mode changes of a file are changes (a world-writable authorized_keys
  is a backdoor waiting to be used).
- An entry that cannot be read is always reported (fail closed), baseline or not.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Mapping
from typing import Any, Final

from trainguard.core.findings import Finding, Severity
from trainguard.host.collect import HostEntry
from trainguard.host.points import DESCRIPTION, SEVERITY, Point

NEW: Final = "host.new_entry"
"""Finding kind of an entry that appeared."""
CHANGED: Final = "host.changed_entry"
"""Finding kind of an entry that changed or became unreadable."""
REMOVED: Final = "host.removed_entry"
"""Finding kind of an entry that disappeared."""

_CRITICAL_SSHD: Final = frozenset(
    {
        "authorizedkeysfile",
        "authorizedkeyscommand",
        "authorizedkeyscommanduser",
        "permitrootlogin",
        "forcecommand",
        "permitemptypasswords",
        "authorizedprincipalsfile",
        "trustedusercakeys",
    }
)
_NOLOGIN_SHELLS: Final = ("nologin", "false", "sync", "halt", "shutdown")


def _point(entry: HostEntry) -> Point:
    try:
        return Point(entry.point)
    except ValueError:
        return Point.SETUID if entry.kind == "setuid" else Point.CRON


def _max(a: Severity, b: Severity) -> Severity:
    return a if a.level >= b.level else b


def severity_of(entry: HostEntry) -> Severity:
    """Severity of a new or changed ``entry``: the point's, escalated by content."""
    point = _point(entry)
    base = SEVERITY[point]
    text = (entry.text or "").lower()
    if point is Point.PASSWD:
        uid = entry.detail.get("uid")
        shell = str(entry.detail.get("shell") or "")
        if uid == 0:
            return Severity.CRITICAL
        if not shell.endswith(_NOLOGIN_SHELLS):
            return Severity.HIGH
        return base
    if (
        point is Point.SUDOERS
        and entry.kind == "line"
        and ("nopasswd" in text or "all=(all" in text.replace(" ", ""))
    ):
        return Severity.CRITICAL
    if point is Point.SSHD and str(entry.detail.get("directive", "")).lower() in _CRITICAL_SSHD:
        return Severity.CRITICAL
    if (
        point is Point.SETUID
        and entry.owner_uid == 0
        and entry.mode is not None
        and entry.mode & stat.S_ISUID
    ):
        return Severity.CRITICAL
    return base


def _actor(entry: HostEntry) -> dict[str, Any] | None:
    if entry.owner_uid is None:
        return None
    return {"uid": entry.owner_uid, "user": entry.detail.get("owner")}


def _evidence(entry: HostEntry, **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "key": entry.key,
        "point": entry.point,
        "kind": entry.kind,
        "digest": entry.digest,
        "text": entry.text,
        "owner_uid": entry.owner_uid,
        "owner": entry.detail.get("owner"),
        "mtime": entry.mtime,
        "mode": oct(entry.mode) if entry.mode is not None else None,
    }
    for name in ("user", "fingerprint", "directive", "uid", "raw_sha256"):
        if name in entry.detail:
            ev[name] = entry.detail[name]
    ev.update(extra)
    return {k: v for k, v in ev.items() if v is not None}


def _describe(entry: HostEntry) -> str:
    what = DESCRIPTION[_point(entry)]
    where = entry.path
    user = entry.detail.get("user")
    owner = entry.detail.get("owner")
    text = f": {entry.text}" if entry.text else ""
    who = f" of user {user}" if user and entry.kind == "line" else ""
    by = f" (file owner {owner})" if owner else ""
    return f"{what}{who} in {where}{text}{by}"


def compare(
    baseline: Mapping[str, HostEntry], current: Mapping[str, HostEntry], *, now: float | None = None
) -> list[Finding]:
    """Findings for every difference between ``baseline`` and ``current`` entries."""
    at = time.time() if now is None else now
    findings: list[Finding] = []

    def add(rule: str, severity: Severity, message: str, entry: HostEntry, **extra: Any) -> None:
        findings.append(
            Finding(
                rule=rule,
                severity=severity,
                message=message,
                path=entry.path,
                time=at,
                actor=_actor(entry),
                evidence=_evidence(entry, **extra),
            )
        )

    new_files = {e.path for k, e in current.items() if e.kind == "file" and k not in baseline}
    new_links = {e.path for k, e in current.items() if e.kind == "symlink" and k not in baseline}
    gone_files = {e.path for k, e in baseline.items() if e.kind == "file" and k not in current}
    changed_line_paths = {
        e.path for k, e in current.items() if e.kind in ("line", "directive") and k not in baseline
    } | {
        e.path for k, e in baseline.items() if e.kind in ("line", "directive") and k not in current
    }

    # 1. Unreadable now: always reported, whatever the baseline says.
    for entry in current.values():
        if entry.kind == "error":
            add(
                CHANGED,
                _max(Severity.HIGH, SEVERITY[_point(entry)]),
                f"cannot read {DESCRIPTION[_point(entry)]} location {entry.path} ({entry.error}); "
                "not verified (fail closed)",
                entry,
                reason="unreadable",
                error=entry.error,
            )
    # 2. New entries.
    for key, entry in current.items():
        if key in baseline or entry.kind == "error":
            continue
        if entry.kind in ("line", "directive") and entry.path in new_files:
            continue
        if entry.kind == "file" and entry.path in new_links:
            continue  # the new symlink's finding names its target
        extra: dict[str, Any] = {}
        if entry.kind == "file":
            lines = [
                e.text
                for e in current.values()
                if e.path == entry.path and e.kind in ("line", "directive")
            ]
            extra["lines"] = lines[:10]
            severity = max(
                [severity_of(entry)]
                + [
                    severity_of(e)
                    for e in current.values()
                    if e.path == entry.path and e.kind == "line"
                ],
                key=lambda s: s.level,
            )
        else:
            severity = severity_of(entry)
        add(NEW, severity, f"new {_describe(entry)}", entry, **extra)
    # 3. Removed entries.
    for key, entry in baseline.items():
        if key in current or entry.kind == "error":
            continue
        if entry.kind in ("line", "directive") and entry.path in gone_files:
            continue
        add(REMOVED, Severity.LOW, f"removed {_describe(entry)}", entry)
    # 4. Changed entries.
    for key, entry in current.items():
        old = baseline.get(key)
        if old is None or entry.kind == "error" or old.kind == "error":
            continue
        reasons = []
        if old.digest != entry.digest and not (
            entry.kind == "file" and entry.path in changed_line_paths
        ):
            reasons.append("content")
        if old.owner_uid != entry.owner_uid and entry.owner_uid is not None:
            reasons.append(f"owner uid {old.owner_uid} -> {entry.owner_uid}")
        if old.mode != entry.mode and entry.mode is not None:
            reasons.append(f"mode {oct(old.mode or 0)} -> {oct(entry.mode)}")
        if not reasons:
            continue
        severity = severity_of(entry)
        if entry.mode is not None and entry.mode & (stat.S_IWOTH):
            severity = _max(severity, Severity.HIGH)
        was = f" (was: {old.text})" if old.text and old.text != entry.text else ""
        add(
            CHANGED,
            severity,
            f"changed ({', '.join(reasons)}) {_describe(entry)}{was}",
            entry,
            old_digest=old.digest,
            old_text=old.text,
            old_mode=oct(old.mode) if old.mode is not None else None,
            old_owner_uid=old.owner_uid,
        )
    findings.sort(key=lambda f: (-f.severity.level, f.rule, f.path or "", f.message))
    return findings
