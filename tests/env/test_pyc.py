"""The pyc comparison: header parsing, the bounded marshal reader, hash-seed noise."""

from __future__ import annotations

import importlib.util
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainguard.env.pyc import (
    PycError,
    PycStatus,
    compare_pyc,
    marshal_tree,
    optimization_level,
    parse_header,
)

SOURCE = b"""
import os
def f(x, *, y=3.5, z=-2**70):
    s = {"alpha", "beta", "gamma", "delta", "eps"}
    return x in s or x in frozenset({1, 2}) and (lambda q: q + 1j)(y)
class C:
    '''doc'''
    def m(self):
        return [i for i in range(3)], ..., b"bytes", None, True
"""


def _pyc(
    tmp_path: Path, source: bytes, *, env: dict[str, str] | None = None, dfile: str | None = None
) -> tuple[Path, bytes]:
    src = tmp_path / "mod.py"
    src.write_bytes(source)
    cfile = tmp_path / "mod.pyc"
    code = (
        "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], "
        "dfile=sys.argv[3] or None, doraise=True)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(src), str(cfile), dfile or ""],
        check=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    return src, cfile.read_bytes()


@pytest.mark.parametrize("seed", ["1", "2", "3"])
def test_pyc_from_other_hash_seed_matches(tmp_path: Path, seed: str) -> None:
    # frozenset constants are marshalled in hash order: bytes differ, code does not.
    src, pyc = _pyc(tmp_path, SOURCE, env={"PYTHONHASHSEED": seed})
    st = src.stat()
    result = compare_pyc(
        pyc, SOURCE, str(src), source_mtime=int(st.st_mtime), source_size=st.st_size, optimize=0
    )
    assert result.status is PycStatus.MATCH


def test_changed_constant_differs(tmp_path: Path) -> None:
    src, pyc = _pyc(tmp_path, SOURCE.replace(b"3.5", b"3.25"))
    src.write_bytes(SOURCE.replace(b"3.5", b"3.75"))  # same size: header validates
    st = src.stat()
    os.utime(src, (st.st_atime, st.st_mtime))
    header = parse_header(pyc)
    result = compare_pyc(
        pyc,
        SOURCE.replace(b"3.5", b"3.75"),
        str(src),
        source_mtime=header.mtime or 0,
        source_size=header.source_size or 0,
        optimize=0,
    )
    assert result.status is PycStatus.DIFFERS


def test_marshal_tree_matches_marshal_for_real_code() -> None:
    code = compile(SOURCE, "x.py", "exec")
    tree_a, names = marshal_tree(marshal.dumps(code))
    tree_b, _ = marshal_tree(marshal.dumps(compile(SOURCE, "/elsewhere/x.py", "exec")))
    assert tree_a == tree_b  # co_filename masked
    assert names[0] == "x.py"
    other, _ = marshal_tree(
        marshal.dumps(compile(SOURCE.replace(b"y=3.5", b"y=4.5"), "x.py", "exec"))
    )
    assert other != tree_a


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xe3",
        b"c" + b"\x00" * 3,
        b"r\x05\x00\x00\x00",
        b"(\xff\xff\xff\x7f",
        b"Q",
        b")\x01" * 600 + b"N",
    ],
)
def test_marshal_tree_rejects_malformed(data: bytes) -> None:
    with pytest.raises(PycError):
        marshal_tree(data)


def test_malformed_and_foreign_headers(tmp_path: Path) -> None:
    assert (
        compare_pyc(b"short", b"", "x.py", source_mtime=0, source_size=0, optimize=0).status
        is PycStatus.MALFORMED
    )
    foreign = b"\x00\x00\r\n" + b"\x00" * 12 + marshal.dumps(compile("x=1", "x", "exec"))
    result = compare_pyc(foreign, b"x=1", "x.py", source_mtime=0, source_size=0, optimize=0)
    assert result.status is PycStatus.OTHER_INTERPRETER
    good = importlib.util.MAGIC_NUMBER + b"\x00" * 12 + b"\xff garbage"
    assert (
        compare_pyc(good, b"x=1", "x.py", source_mtime=0, source_size=0, optimize=0).status
        is PycStatus.MALFORMED
    )


def test_optimization_level_from_name() -> None:
    assert optimization_level("a.cpython-311.pyc") == 0
    assert optimization_level("a.cpython-311.opt-1.pyc") == 1
    assert optimization_level("a.cpython-311.opt-2.pyc") == 2
