"""Check that a byte-compiled ``.pyc`` holds exactly the code of its verified source.

RECORD lists ``.pyc`` files without hashes (pip compiles them after install), so an
attacker who edits only ``torch/optim/__pycache__/adamw.cpython-311.pyc`` leaves
the ``.py`` and its RECORD line pristine while the interpreter runs his code. We
recompile the verified source text with :func:`compile` (compiling is not
executing) exactly as :mod:`py_compile` does and compare the marshalled code.

Two legitimate differences are handled without ever turning the untrusted bytes
into a code object (``marshal.loads`` is "not secure against maliciously
constructed data"):

- ``co_filename``: pip writes the absolute path the file had at install time; a
  moved venv or a symlinked path differs. We first compile under our own path and
  under prefixes learnt from earlier files; if the bytes still differ we compare
  structurally (next point) with ``co_filename`` masked.
- Marshal's back-reference flags depend on reference counts in the compiling
  process, and frozenset constants are written in hash order (PYTHONHASHSEED), so
  equal code can marshal to different bytes. :func:`marshal_tree` is a small,
  bounded, pure-Python reader that turns marshal data into plain tuples with
  references resolved and sets sorted, which we compare instead.
"""

from __future__ import annotations

import enum
import importlib.util
import marshal
import struct
import warnings
from dataclasses import dataclass
from typing import Any, Final

PYC_HEADER_SIZE: Final = 16
"""Magic (4), flags (4), then mtime+size or the 8-byte source hash."""

MAX_MARSHAL_DEPTH: Final = 400
"""Deepest nesting :func:`marshal_tree` follows (CPython allows 2000; real code < 50)."""

MAX_MARSHAL_ITEMS: Final = 50_000_000
"""Most container items one pyc may declare before we call it malformed."""

_FLAG_REF: Final = 0x80
_MASKED_FILENAME: Final = "\x00co_filename\x00"
_RESERVED: Final = ("\x00reserved\x00",)


class PycError(ValueError):
    """The pyc header or marshal data is malformed."""


@dataclass(frozen=True, slots=True)
class PycHeader:
    """The 16-byte header of a pyc (PEP 552)."""

    magic: bytes
    """Interpreter-version magic number."""
    flags: int
    """0: timestamp-based; bit 0: hash-based; bit 1: check the source hash."""
    mtime: int | None
    """Source mtime recorded in a timestamp-based pyc."""
    source_size: int | None
    """Source size (mod 2**32) recorded in a timestamp-based pyc."""
    source_hash: bytes | None
    """SipHash of the source recorded in a hash-based pyc."""

    @property
    def hash_based(self) -> bool:
        """True for PEP 552 hash-based pycs."""
        return bool(self.flags & 0b01)

    @property
    def check_source(self) -> bool:
        """True when the importer validates the source before using this pyc."""
        return not self.hash_based or bool(self.flags & 0b10)


def parse_header(data: bytes) -> PycHeader:
    """Parse a pyc header.

    Raises:
        PycError: Too short, or flags with unknown bits.
    """
    if len(data) < PYC_HEADER_SIZE:
        raise PycError(f"only {len(data)} bytes; a pyc has a 16-byte header")
    magic = data[:4]
    if magic[2:4] != b"\r\n":
        raise PycError("bad magic number")
    (flags,) = struct.unpack("<I", data[4:8])
    if flags & ~0b11:
        raise PycError(f"unknown header flags {flags:#x}")
    if flags & 0b01:
        return PycHeader(magic, flags, None, None, data[8:16])
    mtime, size = struct.unpack("<II", data[8:16])
    return PycHeader(magic, flags, mtime, size, None)


def optimization_level(pyc_name: str) -> int:
    """Optimisation level from a PEP 488 name (``x.cpython-311.opt-2.pyc`` -> 2)."""
    parts = pyc_name.split(".")
    for part in parts:
        if part.startswith("opt-") and part[4:].isdigit():
            return int(part[4:])
    return 0


class PycStatus(enum.StrEnum):
    """Outcome of comparing a pyc with its source."""

    MATCH = "match"
    """Same code as the source compiles to."""
    DIFFERS = "differs"
    """Different code, and the importer would use this pyc: tampered bytecode."""
    STALE = "stale"
    """Different code, but the header does not validate against the source, so the
    importer ignores (and rewrites) it. Harmless, reported at low severity."""
    OTHER_INTERPRETER = "other_interpreter"
    """Built for another Python version; this process cannot recompile it."""
    MALFORMED = "malformed"
    """Header or marshal data cannot be parsed."""


@dataclass(frozen=True, slots=True)
class PycResult:
    """What :func:`compare_pyc` found."""

    status: PycStatus
    """The outcome."""
    detail: str = ""
    """Why, for the finding message."""
    pyc_filename: str | None = None
    """``co_filename`` found in the pyc when it differed from ours (evidence)."""


def header_validates(header: PycHeader, source: bytes, mtime: int, size: int) -> bool:
    """True when the importer would accept this pyc for this source."""
    if header.hash_based:
        if not header.check_source:
            # Unchecked hash-based pycs are used whatever the source says.
            return True
        return header.source_hash == importlib.util.source_hash(source)
    return header.mtime == (mtime & 0xFFFFFFFF) and header.source_size == (size & 0xFFFFFFFF)


class _PrefixMap:
    """Path prefixes learnt from pycs compiled under another directory (moved venvs)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def candidates(self, filename: str) -> list[str]:
        out = []
        for ours, theirs in self.pairs:
            if filename.startswith(ours):
                out.append(theirs + filename[len(ours) :])
        return out

    def learn(self, ours: str, theirs: str) -> None:
        # The longest common suffix of path components is the part both agree on
        # (``site-packages/torch/x.py``); what precedes it is the moved prefix.
        a, b = ours.split("/"), theirs.split("/")
        i = 0
        while i < min(len(a), len(b)) - 1 and a[-1 - i] == b[-1 - i]:
            i += 1
        if i < 2:
            return
        pair = ("/".join(a[: len(a) - i]) + "/", "/".join(b[: len(b) - i]) + "/")
        if pair not in self.pairs and len(self.pairs) < 16:
            self.pairs.append(pair)


_PREFIXES = _PrefixMap()


def _compile(source: bytes, filename: str, optimize: int) -> Any:
    """Compile exactly as importlib's ``source_to_code`` does; warnings are not ours to show."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile(source, filename, "exec", dont_inherit=True, optimize=optimize)


def compare_pyc(
    pyc: bytes, source: bytes, filename: str, *, source_mtime: int, source_size: int, optimize: int
) -> PycResult:
    """Compare a pyc's code with what ``source`` compiles to.

    Args:
        pyc: The whole pyc file.
        source: The verified source bytes (hashed against RECORD by the caller).
        filename: The source path as the importer would name it (``co_filename``).
        source_mtime: ``st_mtime`` of the source, for timestamp headers.
        source_size: ``st_size`` of the source.
        optimize: Optimisation level from the pyc's name.

    Returns:
        The comparison result; never raises on hostile pyc content.
    """
    try:
        header = parse_header(pyc)
    except PycError as exc:
        return PycResult(PycStatus.MALFORMED, str(exc))
    if header.magic != importlib.util.MAGIC_NUMBER:
        return PycResult(PycStatus.OTHER_INTERPRETER, f"magic {header.magic.hex()}")
    body = pyc[PYC_HEADER_SIZE:]
    try:
        code = _compile(source, filename, optimize)
    except (SyntaxError, ValueError) as exc:
        # A source that does not compile has no legitimate bytecode at all.
        status = (
            PycStatus.DIFFERS
            if header_validates(header, source, source_mtime, source_size)
            else PycStatus.STALE
        )
        return PycResult(status, f"source does not compile ({type(exc).__name__})")
    ours = marshal.dumps(code)
    # 1. Fast path: byte-identical, as py_compile would have written it here.
    if ours == body:
        return PycResult(PycStatus.MATCH)
    # 2. Same code compiled under a path learnt from earlier pycs (moved environment).
    for other in _PREFIXES.candidates(filename):
        recompiled = _compile(source, other, optimize)
        if marshal.dumps(recompiled) == body:
            return PycResult(PycStatus.MATCH, pyc_filename=other)
    # 3. Structural comparison with references resolved and co_filename masked.
    try:
        theirs_tree, theirs_names = marshal_tree(body)
        ours_tree, _ = marshal_tree(ours)
    except PycError as exc:
        return PycResult(PycStatus.MALFORMED, f"marshal data: {exc}")
    pyc_filename = theirs_names[0] if theirs_names else None
    if theirs_tree == ours_tree:
        if pyc_filename is not None and pyc_filename != filename:
            _PREFIXES.learn(filename, pyc_filename)
        return PycResult(PycStatus.MATCH, pyc_filename=pyc_filename)
    status = (
        PycStatus.DIFFERS
        if header_validates(header, source, source_mtime, source_size)
        else PycStatus.STALE
    )
    return PycResult(status, "bytecode differs from the compiled source", pyc_filename)


class _Reader:
    """Bounded reader of marshal data into comparable plain values (never code objects)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[object] = []
        self.filenames: list[str] = []
        self.items = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise PycError("truncated marshal data")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def int32(self) -> int:
        return int(struct.unpack("<i", self.take(4))[0])

    def count(self, n: int) -> int:
        if n < 0:
            raise PycError("negative length")
        self.items += n
        if self.items > MAX_MARSHAL_ITEMS or n > len(self.data):
            raise PycError("declares more items than the data can hold")
        return n

    def read(self, depth: int = 0) -> object:
        if depth > MAX_MARSHAL_DEPTH:
            raise PycError("nesting too deep")
        code = self.byte()
        flag = code & _FLAG_REF
        kind = chr(code & ~_FLAG_REF)
        slot: int | None = None
        if flag and kind in ")([<>{c":
            # Containers reserve their slot before their children, like r_ref_reserve.
            slot = len(self.refs)
            self.refs.append(_RESERVED)
        value = self._value(kind, depth)
        if flag:
            if slot is None:
                self.refs.append(value)
            else:
                self.refs[slot] = value
        return value

    def _value(self, kind: str, depth: int) -> object:
        if kind == "0":
            return ("null",)
        if kind == "N":
            return None
        if kind == "F":
            return False
        if kind == "T":
            return True
        if kind == "S":
            return ("stopiteration",)
        if kind == ".":
            return ("ellipsis",)
        if kind == "i":
            return self.int32()
        if kind == "l":
            n = self.int32()
            digits = self.count(abs(n))
            value = 0
            for i in range(digits):
                (digit,) = struct.unpack("<H", self.take(2))
                value |= digit << (15 * i)
            return -value if n < 0 else value
        if kind == "g":
            return ("float", self.take(8))
        if kind == "y":
            return ("complex", self.take(16))
        if kind == "f":
            return ("float", float(self.take(self.byte()).decode("ascii", "replace")))
        if kind == "x":
            real = self.take(self.byte())
            imag = self.take(self.byte())
            return ("complex", real, imag)
        if kind == "s":
            return bytes(self.take(self.count(self.int32())))
        if kind in "tua":
            return self.take(self.count(self.int32())).decode("utf-8", "surrogatepass")
        if kind == "A":
            return self.take(self.count(self.int32())).decode("latin-1")
        if kind in "zZ":
            return self.take(self.byte()).decode("latin-1")
        if kind == ")":
            n = self.byte()
            return ("tuple", *[self.read(depth + 1) for _ in range(n)])
        if kind in "([":
            n = self.count(self.int32())
            return ("tuple" if kind == "(" else "list", *[self.read(depth + 1) for _ in range(n)])
        if kind in "<>":
            n = self.count(self.int32())
            members = sorted((self.read(depth + 1) for _ in range(n)), key=repr)
            return ("set" if kind == "<" else "frozenset", *members)
        if kind == "{":
            pairs = []
            while True:
                key = self.read(depth + 1)
                if key == ("null",):
                    break
                pairs.append((key, self.read(depth + 1)))
                self.count(1)
            return ("dict", *sorted(pairs, key=repr))
        if kind == "r":
            index = self.int32()
            if not 0 <= index < len(self.refs) or self.refs[index] is _RESERVED:
                raise PycError(f"bad back-reference {index}")
            return self.refs[index]
        if kind == "c":
            return self._code(depth)
        if kind == ":":
            # Constant slices (3.14+).
            return ("slice", *[self.read(depth + 1) for _ in range(3)])
        raise PycError(f"unknown marshal type {kind!r}")

    def _code(self, depth: int) -> object:
        # Layout of CPython 3.11-3.14 (Python/marshal.c, w_object for code objects).
        ints = tuple(self.int32() for _ in range(5))
        co_code = self.read(depth + 1)
        consts = self.read(depth + 1)
        names = self.read(depth + 1)
        localsplusnames = self.read(depth + 1)
        localspluskinds = self.read(depth + 1)
        filename = self.read(depth + 1)
        name = self.read(depth + 1)
        qualname = self.read(depth + 1)
        firstlineno = self.int32()
        linetable = self.read(depth + 1)
        exceptiontable = self.read(depth + 1)
        if isinstance(filename, str):
            self.filenames.append(filename)
        return (
            "code",
            ints,
            co_code,
            consts,
            names,
            localsplusnames,
            localspluskinds,
            _MASKED_FILENAME,
            name,
            qualname,
            firstlineno,
            linetable,
            exceptiontable,
        )


def marshal_tree(data: bytes) -> tuple[object, list[str]]:
    """Marshal data as plain nested tuples, plus every ``co_filename`` met.

    References are resolved, sets and dicts sorted, string kinds (interned, ASCII,
    short) unified and ``co_filename`` masked, so two marshallings of equal code
    give equal trees.

    Raises:
        PycError: Truncated, malformed, too deep or too large.
    """
    reader = _Reader(data)
    try:
        tree = reader.read()
    except (struct.error, UnicodeDecodeError, ValueError, OverflowError) as exc:
        if isinstance(exc, PycError):
            raise
        raise PycError(str(exc)) from exc
    except RecursionError as exc:
        raise PycError("nesting too deep") from exc
    if reader.pos != len(data):
        raise PycError(f"{len(data) - reader.pos} trailing bytes after the code object")
    return tree, reader.filenames
