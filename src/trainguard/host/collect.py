"""Read every login and persistence point of a host (or a mounted image) into entries.

An entry is one thing that can change: a file (content digest, owner, mode), one
significant line of a line-oriented file (an SSH key, a cron line, a sudo rule),
one sshd directive, one user account, one setuid file. Comparing entries by key
lets ``host check`` say *which* key or line was added, not just "file changed".

Everything is read below ``root`` (``/`` by default), and symlinks are resolved
inside ``root``, so a mounted image or a fixture tree is read exactly like a live
host. Nothing is executed. What cannot be read becomes an ``error`` entry, which
``host check`` always reports (fail closed).
"""

from __future__ import annotations

import base64
import fnmatch
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Final

from trainguard.core.hashing import sha256_bytes, sha256_file
from trainguard.host.points import Point

_logger = logging.getLogger(__name__)

MAX_TEXT_BYTES: Final = 16 * 1024 * 1024
"""Largest file split into line entries; bigger files get a content digest only."""

MAX_LINK_HOPS: Final = 8
"""Symlinks followed (inside root) before a path is reported as a loop."""

MAX_WALK_FILES: Final = 200_000
"""Files one setuid walk visits before reporting that it stopped."""

DEFAULT_SETUID_PATHS: Final = (
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
)
"""Directories searched for setuid/setgid files when none are given."""

SHELL_RC_FILES: Final = (
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".profile",
    ".zshrc",
    ".zprofile",
    ".zshenv",
    ".bash_logout",
)
"""Per-user shell start-up files."""

SYSTEM_UNIT_DIRS: Final = (
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/run/systemd/system",
    "/etc/systemd/user",
    "/usr/lib/systemd/user",
)
"""System and global user unit directories."""

PAM_MODULE_GLOBS: Final = (
    "/lib/security",
    "/lib64/security",
    "/usr/lib/security",
    "/usr/lib64/security",
    "/lib/*/security",
    "/usr/lib/*/security",
)
"""Where PAM modules (.so) live on the common distributions."""


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One watched thing on the host."""

    key: str
    """Stable identity: ``file:/etc/crontab``, ``line:/root/.ssh/authorized_keys:<h>#0``..."""
    point: str
    """The :class:`~trainguard.host.points.Point` it belongs to."""
    kind: str
    """``file``, ``line``, ``directive``, ``user``, ``symlink``, ``setuid`` or ``error``."""
    path: str
    """Path inside the root (``/etc/crontab``)."""
    digest: str | None = None
    """What is compared: significant content (files), the line, the target (symlinks)."""
    text: str | None = None
    """What a person reads in a report: the line, key summary, directive, account."""
    owner_uid: int | None = None
    """Owner of the file."""
    mode: int | None = None
    """Permission bits (incl. setuid/setgid) of the file."""
    mtime: float | None = None
    """Modification time of the file."""
    error: str | None = None
    """Why it could not be read (kind ``error``)."""
    detail: Mapping[str, Any] = field(default_factory=dict)
    """Point-specific facts (uid of an account, raw digest of a file, user of a key)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form (in baselines)."""
        out: dict[str, Any] = {"point": self.point, "kind": self.kind, "path": self.path}
        for name in ("digest", "text", "owner_uid", "mode", "mtime", "error"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.detail:
            out["detail"] = dict(self.detail)
        return out

    @classmethod
    def from_dict(cls, key: str, data: Mapping[str, Any]) -> HostEntry:
        """Rebuild from :meth:`to_dict`.

        Raises:
            KeyError, TypeError, ValueError: Malformed entry (the caller names the file).
        """
        return cls(
            key=key,
            point=str(data["point"]),
            kind=str(data["kind"]),
            path=str(data["path"]),
            digest=data.get("digest"),
            text=data.get("text"),
            owner_uid=None if data.get("owner_uid") is None else int(data["owner_uid"]),
            mode=None if data.get("mode") is None else int(data["mode"]),
            mtime=None if data.get("mtime") is None else float(data["mtime"]),
            error=data.get("error"),
            detail=dict(data.get("detail") or {}),
        )


@dataclass(frozen=True, slots=True)
class User:
    """One /etc/passwd account."""

    name: str
    """Login name."""
    uid: int
    """User id."""
    gid: int
    """Primary group id."""
    home: str
    """Home directory (inside the root)."""
    shell: str
    """Login shell."""


def parse_passwd(text: str) -> tuple[list[User], list[int]]:
    """Accounts of an /etc/passwd, and the numbers of lines that are not valid entries."""
    users: list[User] = []
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 7 or not fields[2].isdigit() or not fields[3].isdigit():
            bad.append(number)
            continue
        users.append(User(fields[0], int(fields[2]), int(fields[3]), fields[5], fields[6]))
    return users, bad


_KEY_TYPES: Final = (
    "ssh-",
    "ecdsa-",
    "sk-ssh-",
    "sk-ecdsa-",
    "rsa-sha2-",
)


def summarize_key(line: str) -> tuple[str, dict[str, Any]]:
    """``[options] TYPE SHA256:fingerprint comment`` of an authorized_keys line."""
    tokens = line.split()
    for i, token in enumerate(tokens):
        if token.startswith(_KEY_TYPES) and i + 1 < len(tokens):
            blob = tokens[i + 1]
            try:
                raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
                fingerprint = "SHA256:" + base64.b64encode(bytes.fromhex(sha256_bytes(raw))).decode(
                    "ascii"
                ).rstrip("=")
            except ValueError:
                fingerprint = "unparseable-key"
            options = " ".join(tokens[:i])
            comment = " ".join(tokens[i + 2 :])
            parts = [p for p in (options, token, fingerprint, comment) if p]
            return " ".join(parts)[:300], {
                "key_type": token,
                "fingerprint": fingerprint,
                "options": options or None,
                "comment": comment or None,
            }
    return line[:300], {"key_type": None}


def _significant(line: str, point: Point) -> bool:
    text = line.strip()
    if not text:
        return False
    if point is Point.SUDOERS and text.startswith(("#include", "#includedir")):
        return True
    if point is Point.LD_PRELOAD:
        return True  # glibc knows no comments in ld.so.preload
    if point is Point.SYSTEMD and text.startswith(";"):
        return False
    return not text.startswith("#")


class Collector:
    """Gathers entries below one root."""

    def __init__(self, root: Path, setuid_paths: Iterable[str] | None = None) -> None:
        self.root = root
        self.setuid_paths = (
            tuple(setuid_paths) if setuid_paths is not None else DEFAULT_SETUID_PATHS
        )
        self.entries: dict[str, HostEntry] = {}
        self.users: list[User] = []
        self.key_files: list[str] = [".ssh/authorized_keys", ".ssh/authorized_keys2"]

    # -- paths -----------------------------------------------------------------------

    def fs(self, path: str) -> Path:
        """The real path of an in-root path."""
        return self.root / path.lstrip("/")

    def _resolve(self, path: str) -> tuple[str, os.stat_result] | None:
        """Follow symlinks inside the root; None when the path does not exist."""
        current = PurePosixPath(path)
        for _ in range(MAX_LINK_HOPS):
            real = self.fs(str(current))
            st = real.lstat()
            if not stat.S_ISLNK(st.st_mode):
                return str(current), st
            target = PurePosixPath(real.readlink())
            current = target if target.is_absolute() else current.parent / target
            current = PurePosixPath(os.path.normpath(str(current)))
        raise OSError(f"more than {MAX_LINK_HOPS} symlinks")

    def _error(self, point: Point, path: str, why: str) -> None:
        self.entries[f"error:{path}"] = HostEntry(
            f"error:{path}", point.value, "error", path, error=why
        )

    # -- files -------------------------------------------------------------------------

    def add_file(
        self, point: Point, path: str, *, lines: bool = True, extra: Mapping[str, Any] | None = None
    ) -> bytes | None:
        """Record one file (and its significant lines); returns its content when read."""
        real = self.fs(path)
        try:
            st = real.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._error(point, path, exc.strerror or str(exc))
            return None
        detail: dict[str, Any] = dict(extra or {})
        if stat.S_ISLNK(st.st_mode):
            try:
                target = str(real.readlink())
            except OSError as exc:
                self._error(point, path, exc.strerror or str(exc))
                return None
            self.entries[f"symlink:{path}"] = HostEntry(
                f"symlink:{path}",
                point.value,
                "symlink",
                path,
                digest=sha256_bytes(target.encode("utf-8", "surrogateescape")),
                text=f"-> {target}",
                owner_uid=st.st_uid,
                mtime=st.st_mtime,
                detail=detail,
            )
            try:
                resolved = self._resolve(path)
            except OSError as exc:
                self._error(point, path, f"symlink: {exc.strerror or exc}")
                return None
            if resolved is None:
                return None
            content_path, st = resolved
            real = self.fs(content_path)
            detail["resolved"] = content_path
        if stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            self.entries[f"file:{path}"] = HostEntry(
                f"file:{path}",
                point.value,
                "file",
                path,
                digest=f"special:{stat.S_IFMT(st.st_mode):o}",
                owner_uid=st.st_uid,
                mode=stat.S_IMODE(st.st_mode),
                mtime=st.st_mtime,
                detail=detail,
            )
            return None
        try:
            if st.st_size > MAX_TEXT_BYTES:
                raw_digest = sha256_file(real)
                data = None
            else:
                with open(real, "rb") as handle:
                    data = handle.read(MAX_TEXT_BYTES + 1)
                raw_digest = sha256_bytes(data)
        except OSError as exc:
            self._error(point, path, exc.strerror or str(exc))
            return None
        significant_digest = raw_digest
        if data is not None and lines and b"\x00" not in data[:8192]:
            text = data.decode("utf-8", errors="replace")
            kept = [line.strip() for line in text.splitlines() if _significant(line, point)]
            significant_digest = sha256_bytes("\n".join(kept).encode("utf-8", "surrogateescape"))
            self._add_lines(point, path, kept, st, detail)
        detail["raw_sha256"] = raw_digest
        self.entries[f"file:{path}"] = HostEntry(
            f"file:{path}",
            point.value,
            "file",
            path,
            digest=significant_digest,
            owner_uid=st.st_uid,
            mode=stat.S_IMODE(st.st_mode),
            mtime=st.st_mtime,
            detail=detail,
        )
        return data

    def _add_lines(
        self,
        point: Point,
        path: str,
        kept: list[str],
        st: os.stat_result,
        detail: Mapping[str, Any],
    ) -> None:
        seen: dict[str, int] = {}
        for line in kept:
            digest = sha256_bytes(line.encode("utf-8", "surrogateescape"))
            n = seen.get(digest, 0)
            seen[digest] = n + 1
            key = f"line:{path}:{digest[:24]}#{n}"
            text = line[:300]
            line_detail: dict[str, Any] = {k: v for k, v in detail.items() if k == "user"}
            if point is Point.SSH_KEYS:
                text, info = summarize_key(line)
                line_detail.update(info)
            self.entries[key] = HostEntry(
                key,
                point.value,
                "line",
                path,
                digest=digest,
                text=text,
                owner_uid=st.st_uid,
                mtime=st.st_mtime,
                detail=line_detail,
            )

    def add_dir(
        self,
        point: Point,
        path: str,
        *,
        recursive: bool = False,
        pattern: str | None = None,
        lines: bool = True,
    ) -> None:
        """Every file in a directory (optionally recursive, optionally by name pattern)."""
        real = self.fs(path)
        try:
            st = real.lstat()
        except FileNotFoundError:
            return
        except OSError as exc:
            self._error(point, path, exc.strerror or str(exc))
            return
        if stat.S_ISLNK(st.st_mode):
            self.add_file(point, path, lines=lines)
            try:
                resolved = self._resolve(path)
            except OSError:
                return
            if resolved is None or not stat.S_ISDIR(resolved[1].st_mode):
                return
            path = resolved[0]
            real = self.fs(path)
        elif not stat.S_ISDIR(st.st_mode):
            return
        try:
            names = sorted(os.listdir(real))  # noqa: PTH208 - names, not paths
        except OSError as exc:
            self._error(point, path, f"cannot list: {exc.strerror or exc}")
            return
        for name in names:
            child = f"{path.rstrip('/')}/{name}"
            child_real = real / name
            try:
                is_dir = child_real.is_dir() and not child_real.is_symlink()
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    self.add_dir(point, child, recursive=True, pattern=pattern, lines=lines)
                continue
            if pattern is not None and not fnmatch.fnmatchcase(name, pattern):
                continue
            self.add_file(point, child, lines=lines)

    # -- points ------------------------------------------------------------------------

    def collect_users(self) -> None:
        """Accounts from /etc/passwd (new uid-0 users are the critical case)."""
        try:
            text = self.fs("/etc/passwd").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            self._error(Point.PASSWD, "/etc/passwd", "missing")
            return
        except OSError as exc:
            self._error(Point.PASSWD, "/etc/passwd", exc.strerror or str(exc))
            return
        users, bad = parse_passwd(text)
        self.users = users
        for number in bad:
            self._error(Point.PASSWD, "/etc/passwd", f"line {number} is not a passwd entry")
        seen: dict[str, int] = {}
        for user in users:
            n = seen.get(user.name, 0)
            seen[user.name] = n + 1
            key = f"user:{user.name}" + (f"#{n}" if n else "")
            summary = (
                f"{user.name} uid={user.uid} gid={user.gid} home={user.home} shell={user.shell}"
            )
            self.entries[key] = HostEntry(
                key,
                Point.PASSWD.value,
                "user",
                "/etc/passwd",
                digest=sha256_bytes(summary.encode("utf-8", "surrogateescape")),
                text=summary,
                detail={"user": user.name, "uid": user.uid, "gid": user.gid, "shell": user.shell},
            )

    def homes(self) -> list[tuple[str, str]]:
        """(user, home) pairs to search, /root included, each home once."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for user in [*self.users, User("root", 0, 0, "/root", "")]:
            home = os.path.normpath(user.home or "/")
            if home in seen or home == "/" or not home.startswith("/"):
                continue
            seen.add(home)
            out.append((user.name, home))
        return out

    def collect_sshd(self) -> None:
        """sshd_config and the files it Includes, directive by directive."""
        self._sshd_file("/etc/ssh/sshd_config", depth=0)

    def _sshd_file(self, path: str, depth: int) -> None:
        data = self.add_file(Point.SSHD, path, lines=False)
        if data is None or depth > 8:
            return
        text = data.decode("utf-8", errors="replace")
        seen: dict[str, int] = {}
        context = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, value = line.replace("=", " ", 1).partition(" ")
            directive = name.lower()
            value = value.strip()
            if directive == "match":
                context = value
            label = f"{context}|{directive}" if context else directive
            n = seen.get(label, 0)
            seen[label] = n + 1
            key = f"sshd:{path}:{label}#{n}"
            self.entries[key] = HostEntry(
                key,
                Point.SSHD.value,
                "directive",
                path,
                digest=sha256_bytes(value.encode("utf-8", "surrogateescape")),
                text=f"{name} {value}"[:300],
                detail={"directive": name, "match": context or None},
            )
            if directive == "authorizedkeysfile" and not context:
                self.key_files = [v for v in value.split() if v.lower() != "none"]
            if directive == "include":
                for pattern in value.split():
                    absolute = pattern if pattern.startswith("/") else f"/etc/ssh/{pattern}"
                    for match in sorted(self.root.glob(absolute.lstrip("/"))):
                        inside = "/" + str(match.relative_to(self.root)).lstrip("/")
                        self._sshd_file(inside, depth + 1)

    def _key_paths(self, user: str, home: str) -> list[str]:
        out = []
        for spec in self.key_files:
            expanded = spec.replace("%%", "\x00").replace("%h", home).replace("%u", user)
            expanded = expanded.replace("%U", "").replace("\x00", "%")
            out.append(expanded if expanded.startswith("/") else f"{home}/{expanded}")
        for default in (".ssh/authorized_keys", ".ssh/authorized_keys2"):
            path = f"{home}/{default}"
            if path not in out:
                out.append(path)
        return out

    def collect_homes(self) -> None:
        """authorized_keys, shell start-up files and user units of every home."""
        for user, home in self.homes():
            for path in self._key_paths(user, home):
                self.add_file(Point.SSH_KEYS, path, extra={"user": user})
            for name in SHELL_RC_FILES:
                self.add_file(Point.SHELL_RC, f"{home}/{name}", extra={"user": user})
            self.add_dir(Point.SYSTEMD, f"{home}/.config/systemd/user", recursive=True)

    def collect_system(self) -> None:
        """cron, at, systemd, profile, environment, preload, sudoers, PAM."""
        self.add_file(Point.CRON, "/etc/crontab")
        self.add_dir(Point.CRON, "/etc/cron.d")
        for period in ("hourly", "daily", "weekly", "monthly"):
            self.add_dir(Point.CRON, f"/etc/cron.{period}")
        self.add_dir(Point.CRON, "/var/spool/cron/crontabs")
        self.add_dir(Point.CRON, "/var/spool/cron", pattern="*")
        self.add_dir(Point.AT, "/var/spool/cron/atjobs")
        self.add_dir(Point.AT, "/var/spool/at")
        for unit_dir in SYSTEM_UNIT_DIRS:
            self.add_dir(Point.SYSTEMD, unit_dir, recursive=True)
        for name in ("/etc/bash.bashrc", "/etc/profile", "/etc/zsh/zshrc", "/etc/zshrc"):
            self.add_file(Point.PROFILE_D, name)
        self.add_dir(Point.PROFILE_D, "/etc/profile.d")
        self.add_file(Point.ENVIRONMENT, "/etc/environment")
        self.add_file(Point.LD_PRELOAD, "/etc/ld.so.preload")
        self.add_file(Point.SUDOERS, "/etc/sudoers")
        self.add_dir(Point.SUDOERS, "/etc/sudoers.d")
        self.add_dir(Point.PAM, "/etc/pam.d")
        self.add_file(Point.PAM, "/etc/pam.conf")
        for pattern in PAM_MODULE_GLOBS:
            for match in sorted(self.root.glob(pattern.lstrip("/"))):
                inside = "/" + str(match.relative_to(self.root)).lstrip("/")
                self.add_dir(Point.PAM_MODULE, inside, pattern="*.so", lines=False)

    def collect_setuid(self) -> None:
        """setuid/setgid regular files under the configured directories."""
        visited = 0
        for top in self.setuid_paths:
            base = self.fs(top)
            if not base.is_dir() or base.is_symlink():
                continue

            def onerror(exc: OSError, base: Path = base) -> None:
                where = str(exc.filename or base)
                inside = "/" + str(Path(where).relative_to(self.root)).lstrip("/")
                self._error(Point.SETUID, inside, exc.strerror or str(exc))

            for dirpath, _dirs, files in os.walk(base, onerror=onerror, followlinks=False):
                for name in files:
                    visited += 1
                    if visited > MAX_WALK_FILES:
                        self._error(
                            Point.SETUID, top, f"stopped after {MAX_WALK_FILES} files; not complete"
                        )
                        return
                    real = Path(dirpath) / name
                    try:
                        st = real.lstat()
                    except OSError as exc:
                        inside = "/" + str(real.relative_to(self.root)).lstrip("/")
                        self._error(Point.SETUID, inside, exc.strerror or str(exc))
                        continue
                    if not stat.S_ISREG(st.st_mode) or not st.st_mode & (
                        stat.S_ISUID | stat.S_ISGID
                    ):
                        continue
                    inside = "/" + str(real.relative_to(self.root)).lstrip("/")
                    try:
                        digest = sha256_file(real)
                    except OSError as exc:
                        self._error(Point.SETUID, inside, exc.strerror or str(exc))
                        continue
                    bits = "setuid" if st.st_mode & stat.S_ISUID else "setgid"
                    self.entries[f"setuid:{inside}"] = HostEntry(
                        f"setuid:{inside}",
                        Point.SETUID.value,
                        "setuid",
                        inside,
                        digest=digest,
                        text=f"{bits} {stat.filemode(st.st_mode)} uid={st.st_uid}",
                        owner_uid=st.st_uid,
                        mode=stat.S_IMODE(st.st_mode),
                        mtime=st.st_mtime,
                        detail={"bits": bits},
                    )

    def collect(self) -> dict[str, HostEntry]:
        """Everything, in a stable order."""
        self.collect_users()
        self.collect_sshd()
        self.collect_homes()
        self.collect_system()
        self.collect_setuid()
        return dict(sorted(self.entries.items()))


def collect_entries(root: Path, setuid_paths: Iterable[str] | None = None) -> dict[str, HostEntry]:
    """All entries of the host rooted at ``root``."""
    return Collector(root, setuid_paths).collect()


def owner_names(root: Path) -> dict[int, str]:
    """uid -> name from ``root``'s /etc/passwd (not this host's, for mounted images)."""
    try:
        text = (root / "etc/passwd").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    users, _ = parse_passwd(text)
    names: dict[int, str] = {}
    for user in users:
        names.setdefault(user.uid, user.name)
    return names


def with_owner_names(
    entries: Mapping[str, HostEntry], names: Mapping[int, str]
) -> dict[str, HostEntry]:
    """Entries with ``detail.owner`` filled from ``names``."""
    out = {}
    for key, entry in entries.items():
        if entry.owner_uid is not None and entry.owner_uid in names:
            entry = replace(entry, detail={**entry.detail, "owner": names[entry.owner_uid]})
        out[key] = entry
    return out
