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

from typing import Any

from trainguard.core.record import Frozen

_set = object.__setattr__


class GlobalRef(Frozen):
    """A global the pickle imports: ``module`` and attribute path ``name``.

    ``module``/``name`` are what the real unpickler would import after its Python 2
    name mapping (``fix_imports`` for protocols < 3); ``raw_module``/``raw_name`` are
    the bytes the file spelled, kept for messages when they differ. Fields: ``module``
    (imported by ``find_class``), ``name`` (attribute path, dotted for protocol >= 4
    walks), ``offset`` (absolute byte offset of the opcode), ``raw_module`` and
    ``raw_name`` (as written, when the mapping changed them; else empty), ``via`` (how
    the reference arose when not a plain import: ``getattr``, ``EXT2 code 7``...) and
    ``qualified`` (``module.name`` as the policy tables spell it, computed once: the hot
    loop reads it).
    """

    __slots__ = ("module", "name", "offset", "qualified", "raw_module", "raw_name", "via")
    module: str
    name: str
    offset: int
    raw_module: str
    raw_name: str
    via: str
    qualified: str

    def __init__(
        self,
        module: str,
        name: str,
        offset: int,
        raw_module: str = "",
        raw_name: str = "",
        via: str = "",
    ) -> None:
        """Record the reference and precompute :attr:`qualified`."""
        _set(self, "module", module)
        _set(self, "name", name)
        _set(self, "offset", offset)
        _set(self, "raw_module", raw_module)
        _set(self, "raw_name", raw_name)
        _set(self, "via", via)
        _set(self, "qualified", f"{module}.{name}")

    def __repr__(self) -> str:
        """Short form used in messages and test failures."""
        return f"GlobalRef({self.qualified}@{self.offset})"


_NO_STATE: Any = object()
"""Sentinel: BUILD never ran on this object."""


class Call:
    """The result of calling ``func`` with ``args`` (and ``kwargs`` for NEWOBJ_EX).

    ``kind`` names the opcode (``reduce``, ``obj``, ``inst``, ``newobj``,
    ``newobj_ex``); ``offset`` is that opcode's absolute byte offset. Mutations
    applied to the result afterwards are recorded in order: ``state`` holds the last
    BUILD state (the private no-state sentinel until one ran, see :attr:`has_state`;
    ``builds`` counts them), ``appends``/``setitems``/``additems`` hold what
    APPEND(S), SETITEM(S) and ADDITEMS added (the object's ``extend``/``append``,
    ``__setitem__`` and ``add`` ran). Compared and hashed by identity.
    """

    __slots__ = (
        "additems",
        "appends",
        "args",
        "builds",
        "func",
        "kind",
        "kwargs",
        "offset",
        "setitems",
        "state",
    )

    def __init__(
        self,
        func: Any,
        args: Any,
        kind: str,
        offset: int,
        kwargs: Any = None,
    ) -> None:
        """A call with no mutation applied yet."""
        self.func = func
        self.args = args
        self.kind = kind
        self.offset = offset
        self.kwargs = kwargs
        self.state: Any = _NO_STATE
        self.builds = 0
        self.appends: list[Any] | None = None
        self.setitems: list[tuple[Any, Any]] | None = None
        self.additems: list[Any] | None = None

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


class PersistentRef(Frozen):
    """A persistent id the loader resolves (torch: a storage tuple): the ``pid`` value as
    the pickle built it, at the PERSID/BINPERSID opcode's absolute ``offset``."""

    __slots__ = ("offset", "pid")
    pid: Any
    offset: int

    def __init__(self, pid: Any, offset: int) -> None:
        """Record the id."""
        _set(self, "pid", pid)
        _set(self, "offset", offset)


class LazyBytes(Frozen):
    """A bytes or bytearray argument too large to copy: where it lies in the input
    (``offset`` of the first payload byte, ``length``; ``mutable`` for BYTEARRAY8)."""

    __slots__ = ("length", "mutable", "offset")
    offset: int
    length: int
    mutable: bool

    def __init__(self, offset: int, length: int, mutable: bool = False) -> None:
        """Record where the blob lies."""
        _set(self, "offset", offset)
        _set(self, "length", length)
        _set(self, "mutable", mutable)


class LazyStr(Frozen):
    """A text argument too large to decode: where its encoded bytes lie (``offset`` of
    the first encoded byte, encoded ``length``)."""

    __slots__ = ("length", "offset")
    offset: int
    length: int

    def __init__(self, offset: int, length: int) -> None:
        """Record where the text lies."""
        _set(self, "offset", offset)
        _set(self, "length", length)


class OutOfBandBuffer(Frozen):
    """Protocol-5 NEXT_BUFFER: data supplied by the caller, not in the file (``index``
    among the pickle's NEXT_BUFFER opcodes, opcode ``offset``; ``readonly`` once
    READONLY_BUFFER applied)."""

    __slots__ = ("index", "offset", "readonly")
    index: int
    offset: int
    readonly: bool

    def __init__(self, index: int, offset: int, readonly: bool = False) -> None:
        """Record the buffer reference."""
        _set(self, "index", index)
        _set(self, "offset", offset)
        _set(self, "readonly", readonly)


class Opaque(Frozen):
    """A value the machine cannot determine statically (e.g. a dynamic import): ``why``
    (what produced it), opcode ``offset`` and the operands involved (``parts``)."""

    __slots__ = ("offset", "parts", "why")
    why: str
    offset: int
    parts: tuple[Any, ...]

    def __init__(self, why: str, offset: int, parts: tuple[Any, ...] = ()) -> None:
        """Record the unknown value."""
        _set(self, "why", why)
        _set(self, "offset", offset)
        _set(self, "parts", parts)


SYMBOLIC_TYPES = (GlobalRef, Call, PersistentRef, LazyBytes, LazyStr, OutOfBandBuffer, Opaque)
"""Every node type; anything else in a value tree is plain Python data."""
