"""Pickle opcodes (protocols 0-5) as ints, with their names.

The values are those of CPython's ``Lib/pickle.py`` and ``Modules/_pickle.c``;
they are written out here (not imported from :mod:`pickle`) so that the scanner
does not depend on the unpickler it refuses to run, and so that the machine can
dispatch on plain ints read from a buffer.
"""

from __future__ import annotations

from typing import Final

MARK: Final = 0x28  # (
STOP: Final = 0x2E  # .
POP: Final = 0x30  # 0
POP_MARK: Final = 0x31  # 1
DUP: Final = 0x32  # 2
FLOAT: Final = 0x46  # F
INT: Final = 0x49  # I
BININT: Final = 0x4A  # J
BININT1: Final = 0x4B  # K
LONG: Final = 0x4C  # L
BININT2: Final = 0x4D  # M
NONE: Final = 0x4E  # N
PERSID: Final = 0x50  # P
BINPERSID: Final = 0x51  # Q
REDUCE: Final = 0x52  # R
STRING: Final = 0x53  # S
BINSTRING: Final = 0x54  # T
SHORT_BINSTRING: Final = 0x55  # U
UNICODE: Final = 0x56  # V
BINUNICODE: Final = 0x58  # X
APPEND: Final = 0x61  # a
BUILD: Final = 0x62  # b
GLOBAL: Final = 0x63  # c
DICT: Final = 0x64  # d
EMPTY_DICT: Final = 0x7D  # }
APPENDS: Final = 0x65  # e
GET: Final = 0x67  # g
BINGET: Final = 0x68  # h
INST: Final = 0x69  # i
LONG_BINGET: Final = 0x6A  # j
LIST: Final = 0x6C  # l
EMPTY_LIST: Final = 0x5D  # ]
OBJ: Final = 0x6F  # o
PUT: Final = 0x70  # p
BINPUT: Final = 0x71  # q
LONG_BINPUT: Final = 0x72  # r
SETITEM: Final = 0x73  # s
TUPLE: Final = 0x74  # t
EMPTY_TUPLE: Final = 0x29  # )
SETITEMS: Final = 0x75  # u
BINFLOAT: Final = 0x47  # G
# protocol 2
PROTO: Final = 0x80
NEWOBJ: Final = 0x81
EXT1: Final = 0x82
EXT2: Final = 0x83
EXT4: Final = 0x84
TUPLE1: Final = 0x85
TUPLE2: Final = 0x86
TUPLE3: Final = 0x87
NEWTRUE: Final = 0x88
NEWFALSE: Final = 0x89
LONG1: Final = 0x8A
LONG4: Final = 0x8B
# protocol 3
BINBYTES: Final = 0x42  # B
SHORT_BINBYTES: Final = 0x43  # C
# protocol 4
SHORT_BINUNICODE: Final = 0x8C
BINUNICODE8: Final = 0x8D
BINBYTES8: Final = 0x8E
EMPTY_SET: Final = 0x8F
ADDITEMS: Final = 0x90
FROZENSET: Final = 0x91
NEWOBJ_EX: Final = 0x92
STACK_GLOBAL: Final = 0x93
MEMOIZE: Final = 0x94
FRAME: Final = 0x95
# protocol 5
BYTEARRAY8: Final = 0x96
NEXT_BUFFER: Final = 0x97
READONLY_BUFFER: Final = 0x98

HIGHEST_PROTOCOL: Final = 5
"""Largest value PROTO accepts (CPython raises ValueError above it)."""

NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in dict(globals()).items()
    if name.isupper() and isinstance(value, int) and name != "HIGHEST_PROTOCOL"
}
"""Opcode int -> name, for messages."""

STARTS: Final[frozenset[int]] = frozenset(NAMES)
"""Every byte that is a valid opcode; anything else is a bad opcode."""


def opcode_name(op: int) -> str:
    """Name of an opcode for a message, or its hex value when it is not one."""
    return NAMES.get(op, f"0x{op:02x}")
