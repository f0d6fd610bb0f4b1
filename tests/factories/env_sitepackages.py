"""Fake site-packages trees with real dist-info/RECORD files, and tampering helpers.

Sources written here carry a harmless payload: if anything ever executed them they
would create a marker file, which the tests assert never appears.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import py_compile
import sys
from pathlib import Path

from trainguard.env.interpreter import Interpreter


def record_hash(data: bytes) -> str:
    """RECORD's ``sha256=<urlsafe b64 nopad>``."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def marker_source(marker: Path, body: str = "") -> bytes:
    """Python source that would create ``marker`` if it were ever executed."""
    return (
        f"from pathlib import Path as _P\n_P({str(marker)!r}).write_text('ran')\n"
        f"VALUE = 1\n{body}\n"
    ).encode()


def make_dist(
    site: Path,
    name: str,
    version: str,
    files: dict[str, bytes],
    *,
    compile_pyc: bool = True,
    extra_rows: list[str] | None = None,
) -> Path:
    """Install a distribution into ``site`` as pip would; returns its dist-info."""
    site.mkdir(parents=True, exist_ok=True)
    dist_info = site / f"{name}-{version}.dist-info"
    dist_info.mkdir()
    meta = {
        "METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nlong text\n"
        ).encode(),
        "INSTALLER": b"pip\n",
        "WHEEL": b"Wheel-Version: 1.0\n",
    }
    rows: list[str] = []
    for rel, data in {**files, **{f"{dist_info.name}/{k}": v for k, v in meta.items()}}.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append(f"{rel},{record_hash(data)},{len(data)}")
        if compile_pyc and rel.endswith(".py"):
            cfile = importlib.util.cache_from_source(str(path))
            py_compile.compile(str(path), cfile=cfile, doraise=True)
            rows.append(f"{os.path.relpath(cfile, site)},,")
    rows.extend(extra_rows or [])
    rows.append(f"{dist_info.name}/RECORD,,")
    (dist_info / "RECORD").write_text("\n".join(rows) + "\n")
    return dist_info


def fake_interpreter(*site_dirs: Path, ahead: tuple[Path, ...] = ()) -> Interpreter:
    """The running interpreter, but with ``sys.path`` = ``ahead`` + ``site_dirs``."""
    return Interpreter(
        executable=sys.executable,
        version=sys.version,
        version_info=(sys.version_info[0], sys.version_info[1], sys.version_info[2]),
        implementation=sys.implementation.name,
        cache_tag=sys.implementation.cache_tag,
        magic=importlib.util.MAGIC_NUMBER.hex(),
        prefix=str(site_dirs[0].parent),
        base_prefix=sys.base_prefix,
        sys_path=tuple(str(p) for p in (*ahead, *site_dirs)),
        site_packages=tuple(str(p) for p in site_dirs),
        user_site=None,
        enable_user_site=False,
    )


def tamper_pyc_only(source: Path, evil_source: bytes, *, keep_header: bool = True) -> Path:
    """Overwrite ``source``'s pyc with the bytecode of ``evil_source``; the .py is untouched.

    With ``keep_header`` the pyc header keeps the original source's mtime and size,
    so the importer would load it: what an attacker does.
    """
    cfile = Path(importlib.util.cache_from_source(str(source)))
    original_header = cfile.read_bytes()[:16]
    evil = source.parent / "_evil_tmp_source.py"
    evil.write_bytes(evil_source)
    try:
        py_compile.compile(str(evil), cfile=str(cfile), dfile=str(source), doraise=True)
    finally:
        evil.unlink()
    if keep_header:
        data = cfile.read_bytes()
        cfile.write_bytes(original_header + data[16:])
    return cfile
