"""An opcode-level pickle builder for hostile and benign test fixtures.

Fixtures are written opcode by opcode so that tests control every byte (frames,
memo indices, operands from the stack) — things ``pickle.dumps`` never produces.
Malicious payloads are harmless: they would only create a marker file under a
test's tmp dir (``touch <marker>`` / ``open(<marker>, 'w')``). Tests never unpickle
them; ``test_bypasses_pickle.py`` scans every one and asserts the marker never
appears.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Self


class PickleBuilder:
    """Append opcodes; :meth:`build` returns the bytes."""

    def __init__(self) -> None:
        self.out = bytearray()

    # raw -----------------------------------------------------------------
    def raw(self, data: bytes) -> Self:
        """Append bytes verbatim."""
        self.out += data
        return self

    def op(self, code: int, arg: bytes = b"") -> Self:
        """Append one opcode byte and its argument bytes."""
        self.out.append(code)
        self.out += arg
        return self

    def build(self) -> bytes:
        """The pickle bytes written so far."""
        return bytes(self.out)

    def __len__(self) -> int:
        return len(self.out)

    # protocol / framing ---------------------------------------------------
    def proto(self, n: int) -> Self:
        return self.op(0x80, bytes([n]))

    def frame(self, size: int) -> Self:
        return self.op(0x95, struct.pack("<Q", size))

    def framed(self, body: bytes) -> Self:
        """FRAME covering exactly ``body``."""
        return self.frame(len(body)).raw(body)

    def stop(self) -> Self:
        return self.op(0x2E)

    # stack -----------------------------------------------------------------
    def mark(self) -> Self:
        return self.op(0x28)

    def pop(self) -> Self:
        return self.op(0x30)

    def pop_mark(self) -> Self:
        return self.op(0x31)

    def dup(self) -> Self:
        return self.op(0x32)

    # scalars ---------------------------------------------------------------
    def none(self) -> Self:
        return self.op(0x4E)

    def true(self) -> Self:
        return self.op(0x88)

    def false(self) -> Self:
        return self.op(0x89)

    def binint(self, v: int) -> Self:
        return self.op(0x4A, struct.pack("<i", v))

    def binint1(self, v: int) -> Self:
        return self.op(0x4B, bytes([v]))

    def binint2(self, v: int) -> Self:
        return self.op(0x4D, struct.pack("<H", v))

    def int_text(self, text: str) -> Self:
        return self.op(0x49, text.encode() + b"\n")

    def long_text(self, text: str) -> Self:
        return self.op(0x4C, text.encode() + b"\n")

    def long1(self, v: int) -> Self:
        data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True) if v else b""
        return self.op(0x8A, bytes([len(data)]) + data)

    def long4(self, v: int) -> Self:
        data = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True) if v else b""
        return self.op(0x8B, struct.pack("<i", len(data)) + data)

    def float_text(self, text: str) -> Self:
        return self.op(0x46, text.encode() + b"\n")

    def binfloat(self, v: float) -> Self:
        return self.op(0x47, struct.pack(">d", v))

    # strings ---------------------------------------------------------------
    def short_binunicode(self, s: str) -> Self:
        data = s.encode("utf-8")
        return self.op(0x8C, bytes([len(data)]) + data)

    def binunicode(self, s: str) -> Self:
        data = s.encode("utf-8")
        return self.op(0x58, struct.pack("<I", len(data)) + data)

    def binunicode8(self, s: str) -> Self:
        data = s.encode("utf-8")
        return self.op(0x8D, struct.pack("<Q", len(data)) + data)

    def unicode_line(self, s: str) -> Self:
        return self.op(0x56, s.encode("raw-unicode-escape") + b"\n")

    def string(self, s: str, quote: str = "'") -> Self:
        return self.op(0x53, f"{quote}{s}{quote}\n".encode())

    def binstring(self, s: bytes) -> Self:
        return self.op(0x54, struct.pack("<i", len(s)) + s)

    def short_binstring(self, s: bytes) -> Self:
        return self.op(0x55, bytes([len(s)]) + s)

    def short_binbytes(self, b: bytes) -> Self:
        return self.op(0x43, bytes([len(b)]) + b)

    def binbytes(self, b: bytes) -> Self:
        return self.op(0x42, struct.pack("<I", len(b)) + b)

    def binbytes8(self, b: bytes) -> Self:
        return self.op(0x8E, struct.pack("<Q", len(b)) + b)

    def bytearray8(self, b: bytes) -> Self:
        return self.op(0x96, struct.pack("<Q", len(b)) + b)

    # containers ------------------------------------------------------------
    def empty_tuple(self) -> Self:
        return self.op(0x29)

    def tuple(self) -> Self:
        return self.op(0x74)

    def tuple1(self) -> Self:
        return self.op(0x85)

    def tuple2(self) -> Self:
        return self.op(0x86)

    def tuple3(self) -> Self:
        return self.op(0x87)

    def empty_list(self) -> Self:
        return self.op(0x5D)

    def list(self) -> Self:
        return self.op(0x6C)

    def append(self) -> Self:
        return self.op(0x61)

    def appends(self) -> Self:
        return self.op(0x65)

    def empty_dict(self) -> Self:
        return self.op(0x7D)

    def dict(self) -> Self:
        return self.op(0x64)

    def setitem(self) -> Self:
        return self.op(0x73)

    def setitems(self) -> Self:
        return self.op(0x75)

    def empty_set(self) -> Self:
        return self.op(0x8F)

    def additems(self) -> Self:
        return self.op(0x90)

    def frozenset(self) -> Self:
        return self.op(0x91)

    # memo ------------------------------------------------------------------
    def put(self, i: int) -> Self:
        return self.op(0x70, f"{i}\n".encode())

    def binput(self, i: int) -> Self:
        return self.op(0x71, bytes([i]))

    def long_binput(self, i: int) -> Self:
        return self.op(0x72, struct.pack("<I", i))

    def memoize(self) -> Self:
        return self.op(0x94)

    def get(self, i: int) -> Self:
        return self.op(0x67, f"{i}\n".encode())

    def binget(self, i: int) -> Self:
        return self.op(0x68, bytes([i]))

    def long_binget(self, i: int) -> Self:
        return self.op(0x6A, struct.pack("<I", i))

    # imports and calls ---------------------------------------------------
    def global_(self, module: str, name: str) -> Self:
        return self.op(0x63, f"{module}\n{name}\n".encode())

    def stack_global(self, module: str | None = None, name: str | None = None) -> Self:
        """STACK_GLOBAL, pushing the operands first when given."""
        if module is not None and name is not None:
            self.short_binunicode(module).short_binunicode(name)
        return self.op(0x93)

    def inst(self, module: str, name: str) -> Self:
        return self.op(0x69, f"{module}\n{name}\n".encode())

    def obj(self) -> Self:
        return self.op(0x6F)

    def reduce(self) -> Self:
        return self.op(0x52)

    def build_op(self) -> Self:
        return self.op(0x62)

    def newobj(self) -> Self:
        return self.op(0x81)

    def newobj_ex(self) -> Self:
        return self.op(0x92)

    def ext1(self, code: int) -> Self:
        return self.op(0x82, bytes([code]))

    def ext2(self, code: int) -> Self:
        return self.op(0x83, struct.pack("<H", code))

    def ext4(self, code: int) -> Self:
        return self.op(0x84, struct.pack("<i", code))

    def persid(self, pid: str) -> Self:
        return self.op(0x50, pid.encode() + b"\n")

    def binpersid(self) -> Self:
        return self.op(0x51)

    def next_buffer(self) -> Self:
        return self.op(0x97)

    def readonly_buffer(self) -> Self:
        return self.op(0x98)

    # conveniences ------------------------------------------------------
    def call(self, module: str, name: str, *args: str | int | bytes, stack: bool = False) -> Self:
        """``module.name(*args)`` as GLOBAL (or STACK_GLOBAL) + MARK args TUPLE + REDUCE."""
        if stack:
            self.stack_global(module, name)
        else:
            self.global_(module, name)
        self.mark()
        for arg in args:
            self.value(arg)
        return self.tuple().reduce()

    def value(self, v: str | int | bytes) -> Self:
        """Push a plain str, int or bytes with the smallest binary opcode."""
        if isinstance(v, bool):
            return self.true() if v else self.false()
        if isinstance(v, int):
            return self.binint(v)
        if isinstance(v, bytes):
            return self.binbytes(v)
        return self.binunicode(v)


# -------------------------------------------------------------------- payloads
def shell_marker(marker: Path) -> str:
    """A shell command that would create ``marker`` (harmless proof of execution)."""
    return f"touch {marker}"


def python_marker(marker: Path) -> str:
    """Python source that would create ``marker``."""
    return f"open({str(marker)!r}, 'w').write('ran')"


def os_system(marker: Path, proto: int = 2) -> bytes:
    """The classic payload: os.system('touch marker')."""
    return PickleBuilder().proto(proto).call("os", "system", shell_marker(marker)).stop().build()


def builtins_exec(marker: Path) -> bytes:
    """builtins.exec of Python source that writes the marker."""
    return PickleBuilder().proto(2).call("builtins", "exec", python_marker(marker)).stop().build()


def stack_global_call(module: str, name: str, *args: str | int | bytes) -> bytes:
    """A protocol-4 pickle calling ``module.name(*args)`` through STACK_GLOBAL."""
    return PickleBuilder().proto(4).call(module, name, *args, stack=True).stop().build()


def global_call(module: str, name: str, *args: str | int | bytes, proto: int = 2) -> bytes:
    """A pickle calling ``module.name(*args)`` through GLOBAL."""
    b = PickleBuilder()
    if proto >= 2:
        b.proto(proto)
    return b.call(module, name, *args).stop().build()


def benign_state_dict() -> bytes:
    """A torch-shaped protocol-2 state dict: OrderedDict of one float tensor."""
    b = PickleBuilder().proto(2)
    b.global_("collections", "OrderedDict").binput(0).empty_tuple().reduce().binput(1)
    b.mark().binunicode("weight")
    b.global_("torch._utils", "_rebuild_tensor_v2").binput(2)
    b.mark()
    b.mark().binunicode("storage").global_("torch", "FloatStorage").binunicode("0")
    b.binunicode("cpu").binint1(4).tuple().binpersid()
    b.binint1(0).binint1(4).tuple1().binint1(1).tuple1().false()
    b.binget(0).empty_tuple().reduce()
    b.tuple().reduce()
    b.setitems().stop()
    return b.build()


MaliciousFactory = Callable[[Path], bytes]

MALICIOUS_FIXTURES: dict[str, MaliciousFactory] = {
    "os.system proto2": lambda m: os_system(m, 2),
    "os.system proto0": lambda m: (
        PickleBuilder()
        .global_("os", "system")
        .mark()
        .string(shell_marker(m))
        .tuple()
        .reduce()
        .stop()
        .build()
    ),
    "builtins.exec": builtins_exec,
    "posix.system stack_global": lambda m: stack_global_call("posix", "system", shell_marker(m)),
    "subprocess.Popen newobj": lambda m: (
        PickleBuilder()
        .proto(2)
        .global_("subprocess", "Popen")
        .mark()
        .mark()
        .binunicode("sh")
        .binunicode("-c")
        .binunicode(shell_marker(m))
        .list()
        .tuple()
        .newobj()
        .stop()
        .build()
    ),
    "pkgutil.resolve_name": lambda m: (
        PickleBuilder()
        .proto(2)
        .call("pkgutil", "resolve_name", "os:system")
        .mark()
        .binunicode(shell_marker(m))
        .tuple()
        .reduce()
        .stop()
        .build()
    ),
    "eval": lambda m: global_call(
        "builtins", "eval", f"__import__('os').system({shell_marker(m)!r})"
    ),
    "broken after payload": lambda m: os_system(m)[:-1] + b"\xff\xfe garbage",
}
"""Every malicious fixture; each takes the marker path its payload would create."""
