"""Symbolic values: what the pickle machine pushes instead of real objects.

Plain data stays plain: ``None``, bools, ints, floats, ``str``, ``bytes``,
``bytearray``, tuples, lists, dicts, sets and frozensets are the real Python
objects, so a pickle of plain data yields exactly what ``pickle.loads`` would.
Everything that would run code in a real unpickler is a node instead:

- :class:`GlobalRef` for a ``GLOBAL``/``STACK_GLOBAL``/``INST``/``EXT`` import,
- :class:`Call` for ``REDUCE``/``OBJ``/``INST``/``NEWOBJ``/``NEWOBJ_EX``; later
  ``BUILD``, ``APPEND(S)``, ``SETITEM(S)`` and ``ADDITEMS`` on the call's result are
  recorded on the same node, because those opcodes mutate that object in place and
  the memo shares it (a separate ``Build`` wrapper would be missed through ``GET``),
- :class:`PersistentRef` for ``PERSID``/``BINPERSID`` (torch storages),
- :class:`LazyBytes` / :class:`LazyStr` for big blobs that are never copied,
- :class:`OutOfBandBuffer` for protocol-5 ``NEXT_BUFFER``,
- :class:`Opaque` for a value the machine cannot know (a dynamic import).

Nodes compare by identity, hash by identity and never recurse on hashing, so a
hostile pickle cannot make the scanner run user code or blow the C stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True, eq=False)
class GlobalRef:
    """A global the pickle imports: ``module`` and attribute path ``name``.

    ``module``/``name`` are what the real unpickler would import after its Python 2
    name mapping (``fix_imports`` for protocols < 3); ``raw_module``/``raw_name`` are
    the bytes the file spelled, kept for messages when they differ.
    """

    module: str
    """Module imported by ``find_class`` (after the Python 2 mapping)."""
    name: str
    """Attribute path looked up on the module; dotted for protocol >= 4 walks."""
    offset: int
    """Absolute byte offset of the opcode that produced the reference."""
    raw_module: str = ""
    """Module as written in the file, when the mapping changed it; else empty."""
    raw_name: str = ""
    """Name as written in the file, when the mapping changed it; else empty."""
    via: str = ""
    """How the reference arose when not a plain import (``getattr``, ``EXT2 code 7``...)."""
    qualified: str = field(init=False, repr=False)
    """``module.name`` as the policy tables spell it (computed once: the hot loop reads it)."""

    def __post_init__(self) -> None:
        """Precompute :attr:`qualified`."""
        object.__setattr__(self, "qualified", f"{self.module}.{self.name}")

    def __repr__(self) -> str:
        """Short form used in messages and test failures."""
        return f"GlobalRef({self.qualified}@{self.offset})"


_NO_STATE: Any = object()
"""Sentinel: BUILD never ran on this object."""


@dataclass(slots=True, eq=False)
class Call:
    """The result of calling ``func`` with ``args`` (and ``kwargs`` for NEWOBJ_EX).

    ``kind`` names the opcode (``reduce``, ``obj``, ``inst``, ``newobj``,
    ``newobj_ex``). Mutations applied to the result afterwards are appended in
    order: ``state`` holds the last BUILD state (``builds`` counts them),
    ``appends``/``setitems``/``additems`` hold what the container opcodes added.
    """

    func: Any
    """The callable: usually a :class:`GlobalRef`, possibly another node."""
    args: Any
    """Argument tuple (or a node standing for one)."""
    kind: str
    """Opcode family that made the call."""
    offset: int
    """Absolute byte offset of that opcode."""
    kwargs: Any = None
    """Keyword arguments for NEWOBJ_EX, else None."""
    state: Any = _NO_STATE
    """Last BUILD state applied, or the private no-state sentinel (see :attr:`has_state`)."""
    builds: int = 0
    """How many BUILD opcodes targeted this object."""
    appends: list[Any] | None = None
    """Items APPEND/APPENDS added (the object's ``extend``/``append`` ran)."""
    setitems: list[tuple[Any, Any]] | None = None
    """Key/value pairs SETITEM/SETITEMS stored (the object's ``__setitem__`` ran)."""
    additems: list[Any] | None = None
    """Items ADDITEMS added (the object's ``add`` ran)."""

    @property
    def has_state(self) -> bool:
        """True when a BUILD applied a state to this object."""
        return self.state is not _NO_STATE

    @property
    def target(self) -> str | None:
        """``module.name`` of the callable when it is a global, else None."""
        func = self.func
        return func.qualified if isinstance(func, GlobalRef) else None

    def __repr__(self) -> str:
        """Short form: never recurses into arguments (they may be huge or cyclic)."""
        return f"Call({self.target or type(self.func).__name__}, {self.kind}@{self.offset})"


@dataclass(frozen=True, slots=True, eq=False)
class PersistentRef:
    """A persistent id the loader resolves (torch: a storage tuple)."""

    pid: Any
    """The persistent id value as the pickle built it."""
    offset: int
    """Absolute byte offset of the PERSID/BINPERSID opcode."""


@dataclass(frozen=True, slots=True, eq=False)
class LazyBytes:
    """A bytes or bytearray argument too large to copy: where it lies in the input."""

    offset: int
    """Absolute byte offset of the first payload byte."""
    length: int
    """Payload length in bytes."""
    mutable: bool = False
    """True for BYTEARRAY8."""


@dataclass(frozen=True, slots=True, eq=False)
class LazyStr:
    """A text argument too large to decode: where its encoded bytes lie."""

    offset: int
    """Absolute byte offset of the first encoded byte."""
    length: int
    """Encoded length in bytes."""


@dataclass(frozen=True, slots=True, eq=False)
class OutOfBandBuffer:
    """Protocol-5 NEXT_BUFFER: data supplied by the caller, not in the file."""

    index: int
    """Ordinal of the buffer among the pickle's NEXT_BUFFER opcodes."""
    offset: int
    """Absolute byte offset of the opcode."""
    readonly: bool = False
    """True once READONLY_BUFFER applied."""


@dataclass(frozen=True, slots=True, eq=False)
class Opaque:
    """A value the machine cannot determine statically (e.g. a dynamic import)."""

    why: str
    """What produced it."""
    offset: int
    """Absolute byte offset of the opcode."""
    parts: tuple[Any, ...] = field(default=())
    """Operands involved, for later inspection."""


SYMBOLIC_TYPES = (GlobalRef, Call, PersistentRef, LazyBytes, LazyStr, OutOfBandBuffer, Opaque)
"""Every node type; anything else in a value tree is plain Python data."""
