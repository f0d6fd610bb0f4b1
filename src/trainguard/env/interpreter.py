"""Which interpreter's environment we check, and where its packages live.

For the running interpreter this is read from :mod:`sys` and :mod:`site`. For
``--python PATH`` we ask that interpreter, with ``-I`` (no user site, no
``PYTHONPATH``, no cwd), to print the same facts as JSON. ``-I`` also turns off
the user site, which a normal run of that interpreter processes, so the user
site is always included for a queried interpreter (checking more, never less). That runs the target
interpreter, which is the user's own environment, not a file under scan; every
file is then read and hashed by *this* process.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trainguard.core.errors import EnvError

_logger = logging.getLogger(__name__)

QUERY_TIMEOUT_S: Final = 60.0
"""How long the target interpreter may take to answer."""

_QUERY = (
    "import sys, json, site, importlib.util\n"
    "try:\n"
    "    sp = site.getsitepackages()\n"
    "except Exception:\n"
    "    sp = []\n"
    "try:\n"
    "    us = site.getusersitepackages()\n"
    "except Exception:\n"
    "    us = None\n"
    "print(json.dumps({'executable': sys.executable, 'version': sys.version,\n"
    " 'version_info': list(sys.version_info[:3]), 'implementation': sys.implementation.name,\n"
    " 'cache_tag': sys.implementation.cache_tag, 'magic': importlib.util.MAGIC_NUMBER.hex(),\n"
    " 'prefix': sys.prefix, 'base_prefix': sys.base_prefix, 'path': sys.path,\n"
    " 'site_packages': sp, 'user_site': us, 'enable_user_site': True,\n"
    " 'platform': sys.platform}))\n"
)


@dataclass(frozen=True, slots=True)
class Interpreter:
    """Facts about one Python interpreter that the checks need."""

    executable: str
    """Path of the interpreter binary."""
    version: str
    """``sys.version``."""
    version_info: tuple[int, int, int]
    """Major, minor, micro."""
    implementation: str
    """``cpython``, ``pypy``..."""
    cache_tag: str | None
    """``cpython-311``: names the ``__pycache__`` files this interpreter loads."""
    magic: str
    """Bytecode magic number (hex); pycs with another magic are not loaded."""
    prefix: str
    """``sys.prefix`` (the venv)."""
    base_prefix: str
    """``sys.base_prefix`` (the base installation)."""
    sys_path: tuple[str, ...]
    """``sys.path`` in import order."""
    site_packages: tuple[str, ...]
    """``site.getsitepackages()``: the directories whose ``.pth`` files are processed."""
    user_site: str | None
    """``site.getusersitepackages()``."""
    enable_user_site: bool
    """Whether the user site is processed (False under ``-s``/``-I``)."""

    @property
    def is_current(self) -> bool:
        """True when this is the interpreter running trainguard (pycs can be recompiled)."""
        return self.magic == importlib.util.MAGIC_NUMBER.hex()

    def site_dirs(self) -> list[Path]:
        """Directories whose ``.pth`` files the ``site`` module processes, in order."""
        dirs = [Path(p) for p in self.site_packages]
        if self.enable_user_site and self.user_site:
            dirs.append(Path(self.user_site))
        out: list[Path] = []
        for path in dirs:
            if path not in out and path.is_dir():
                out.append(path)
        return out

    def path_dirs(self) -> list[Path]:
        """Existing directories on sys.path (zip files and missing entries dropped)."""
        out: list[Path] = []
        seen: set[Path] = set()
        for entry in self.sys_path:
            path = Path(os.path.normpath(Path(entry or Path.cwd()).absolute()))
            try:
                real = path.resolve()
            except OSError:
                continue
            # lib64 -> lib style symlinks would otherwise verify the same files twice.
            if real not in seen and path.is_dir():
                seen.add(real)
                out.append(path)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON form for snapshots."""
        return {
            "executable": self.executable,
            "version": self.version,
            "version_info": list(self.version_info),
            "implementation": self.implementation,
            "cache_tag": self.cache_tag,
            "magic": self.magic,
            "prefix": self.prefix,
        }


def current_interpreter() -> Interpreter:
    """The interpreter running trainguard."""
    try:
        site_packages = tuple(site.getsitepackages())
    except AttributeError:
        site_packages = ()
    return Interpreter(
        executable=sys.executable,
        version=sys.version,
        version_info=(sys.version_info[0], sys.version_info[1], sys.version_info[2]),
        implementation=sys.implementation.name,
        cache_tag=sys.implementation.cache_tag,
        magic=importlib.util.MAGIC_NUMBER.hex(),
        prefix=sys.prefix,
        base_prefix=sys.base_prefix,
        sys_path=tuple(sys.path),
        site_packages=site_packages,
        user_site=site.getusersitepackages(),
        enable_user_site=bool(site.ENABLE_USER_SITE),
    )


def query_interpreter(python: str | Path) -> Interpreter:
    """Ask another interpreter for its paths (runs it with ``-I``).

    Raises:
        EnvError: It cannot be run, times out, or answers something unexpected.
    """
    exe = str(python)
    try:
        proc = subprocess.run(
            [exe, "-I", "-c", _QUERY],
            capture_output=True,
            text=True,
            timeout=QUERY_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        raise EnvError(f"{exe}: no such interpreter; give the path of a python binary") from exc
    except PermissionError as exc:
        raise EnvError(f"{exe}: not executable; give the path of a python binary") from exc
    except OSError as exc:
        raise EnvError(f"{exe}: cannot run: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise EnvError(f"{exe}: did not answer within {QUERY_TIMEOUT_S:.0f}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise EnvError(f"{exe}: exited {proc.returncode} ({tail[0][:200]}); is it Python 3?")
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        info = data["version_info"]
        return Interpreter(
            executable=str(data["executable"]),
            version=str(data["version"]),
            version_info=(int(info[0]), int(info[1]), int(info[2])),
            implementation=str(data["implementation"]),
            cache_tag=data["cache_tag"],
            magic=str(data["magic"]),
            prefix=str(data["prefix"]),
            base_prefix=str(data["base_prefix"]),
            sys_path=tuple(str(p) for p in data["path"]),
            site_packages=tuple(str(p) for p in data["site_packages"]),
            user_site=data["user_site"],
            enable_user_site=bool(data["enable_user_site"]),
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise EnvError(f"{exe}: unexpected answer to the sys.path query; is it CPython 3?") from exc
