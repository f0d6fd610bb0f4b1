"""joblib dumps: a pickle with raw numpy array blocks written in the middle of it.

``joblib.dump`` pickles a ``NumpyArrayWrapper`` (subclass, shape, order, dtype,
alignment) for each array, then writes the array's raw bytes straight into the
file; ``NumpyUnpickler.load_build`` reads them back right after the wrapper's
BUILD opcode and pickling resumes behind them. A linear opcode parser therefore
stops at the first array, and a payload placed after it went unseen (ModelScan
#356, picklescan exit 2 with only benign globals).

This module tracks just enough of the pickle machine (stack, memo, marks,
literals, globals, frames) to find each wrapper BUILD, work out the dtype and
shape it declares, and skip exactly the bytes joblib would read (the alignment
padding included). The opcode segments between the blocks are then stitched
into one stream and analysed by the real symbolic pickle machine under the
normal policy; object arrays, which joblib stores as a nested pickle, are
analysed as pickles of their own. Whatever cannot be resolved (a wrapper built
by an unknown callable, a block inside a frame) is a finding, never a guess.
"""

from __future__ import annotations

import io
import pickletools
from dataclasses import dataclass, field
from typing import Any, Final

from trainguard.core.findings import Severity, Verdict
from trainguard.scan.formats.context import ScanContext, exempted
from trainguard.scan.formats.npy import DtypeError, dtype_info

WRAPPER: Final = ("joblib.numpy_pickle", "NumpyArrayWrapper")
COMPAT_WRAPPERS: Final = frozenset(
    {
        ("joblib.numpy_pickle_compat", "NDArrayWrapper"),
        ("joblib.numpy_pickle_compat", "ZNDArrayWrapper"),
        ("joblib.numpy_pickle", "NDArrayWrapper"),
        ("joblib.numpy_pickle", "ZNDArrayWrapper"),
    }
)
WRAPPER_NAME: Final = "joblib.numpy_pickle.NumpyArrayWrapper"
"""The policy denies all of ``joblib`` (its loaders unpickle); inside a dump this module
followed completely, the wrapper's only effect (reading the array block, or a nested
pickle that is scanned on its own) has been reproduced, so its import is accepted."""
_MARKERS: Final = (b"NumpyArrayWrapper", b"NDArrayWrapper")


def has_joblib_markers(data: memoryview) -> bool:
    """A joblib dump names its wrapper class in the pickle (before the first array)."""
    window = bytes(data[: 1 << 20]) if len(data) > 1 << 20 else bytes(data)
    return any(marker in window for marker in _MARKERS)


class JoblibError(ValueError):
    """The stream cannot be followed the way joblib's unpickler would."""

    def __init__(self, message: str, offset: int, rule: str = "joblib.unparseable") -> None:
        super().__init__(message)
        self.offset = offset
        self.rule = rule


@dataclass(eq=False, slots=True)
class _Global:
    module: str
    name: str


@dataclass(eq=False, slots=True)
class _Obj:
    """An instance the machine built; ``cls`` is the class global when known."""

    cls: _Global | None
    attrs: dict[str, Any] = field(default_factory=dict)
    ambiguous: bool = False


@dataclass(eq=False, slots=True)
class _Dtype:
    descr: Any
    elsize: int = -1
    flags: int = 0


_WRAPPER_ARGS: Final = (
    "subclass",
    "shape",
    "order",
    "dtype",
    "allow_mmap",
    "numpy_array_alignment_bytes",
)
"""Positional parameters of ``NumpyArrayWrapper.__init__``."""
_MARK: Final = object()
_OPAQUE: Final = object()


@dataclass(slots=True)
class Block:
    """One span joblib reads outside the opcode stream."""

    start: int
    end: int
    kind: str
    """``raw`` (array bytes and padding) or ``pickle`` (an object array's nested pickle)."""


class _Walker:
    """A minimal pickle machine that only follows values joblib's BUILD hook looks at."""

    def __init__(self, data: memoryview, ctx: ScanContext, member: str | None) -> None:
        self.data = data
        self.ctx = ctx
        self.member = member
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.blocks: list[Block] = []
        self.frame_end = -1
        self.external: list[int] = []
        self.nested: list[Any] = []

    def run(self) -> int:
        """Follow the outer pickle to STOP; return the offset after it."""
        pos = 0
        size = len(self.data)
        while pos < size:
            self.ctx.check_deadline()
            reader = _Reader(self.data, pos)
            try:
                op, arg, _ = next(pickletools.genops(reader))  # type: ignore[arg-type]
            except (ValueError, StopIteration, UnicodeDecodeError) as exc:
                raise JoblibError(f"opcode at {pos} cannot be parsed: {exc}", pos) from exc
            after = reader.tell()
            if op.name == "FRAME":
                self.frame_end = after + int(arg or 0)
            self._step(op, arg, pos)
            if op.name == "STOP":
                return after
            pos = after
            if op.name == "BUILD" and self.stack and self._is_wrapper(self.stack[-1]):
                pos = self._read_array(self.stack[-1], pos)
        raise JoblibError("the pickle ends without STOP", pos)

    # -- wrapper handling ----------------------------------------------------------------
    @staticmethod
    def _is_wrapper(value: Any) -> bool:
        if not isinstance(value, _Obj) or value.cls is None:
            return False
        key = (value.cls.module, value.cls.name)
        return key == WRAPPER or key in COMPAT_WRAPPERS

    def _read_array(self, wrapper: _Obj, pos: int) -> int:
        if self.frame_end > pos:
            raise JoblibError(
                "an array block starts inside a pickle frame: joblib reads it from after the "
                "frame while the rest of the frame still runs (a parser differential)",
                pos,
                rule="joblib.frame_straddle",
            )
        assert wrapper.cls is not None
        self.stack[-1] = _OPAQUE
        if (wrapper.cls.module, wrapper.cls.name) != WRAPPER:
            self.external.append(pos)
            return pos
        attrs = wrapper.attrs
        shape, dtype = attrs.get("shape"), attrs.get("dtype")
        if not isinstance(shape, tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise JoblibError(
                f"array wrapper with unreadable shape {shape!r}", pos, rule="joblib.bad_wrapper"
            )
        if not isinstance(dtype, _Dtype):
            raise JoblibError(
                "array wrapper without a readable dtype", pos, rule="joblib.bad_wrapper"
            )
        try:
            itemsize, has_objects = dtype_info(dtype.descr)
        except DtypeError as exc:
            raise JoblibError(str(exc), pos, rule="joblib.bad_wrapper") from exc
        if dtype.elsize > 0:
            itemsize = dtype.elsize
        has_objects = has_objects or bool(dtype.flags & 1)
        if has_objects:
            result = self.ctx.pickle(self.data, member=self.member, start=pos, adopt=False)
            self.nested.append(result)
            if not result.complete:
                raise JoblibError(
                    "the object array's nested pickle does not parse",
                    pos,
                    rule="joblib.bad_wrapper",
                )
            self.blocks.append(Block(pos, result.end, "pickle"))
            return int(result.end)
        if itemsize <= 0:
            raise JoblibError(
                "array dtype of size 0 cannot be read by joblib", pos, rule="joblib.bad_wrapper"
            )
        count = 1
        for dim in shape:
            count *= dim
        end = pos
        if attrs.get("numpy_array_alignment_bytes") is not None:
            if end >= len(self.data):
                raise JoblibError("missing alignment padding", pos, rule="joblib.truncated")
            end += 1 + self.data[end]
        end += count * itemsize
        if end > len(self.data):
            raise JoblibError(
                f"array of shape {shape} needs {end - pos} bytes, the file ends first",
                pos,
                rule="joblib.truncated",
            )
        self.blocks.append(Block(pos, end, "raw"))
        return end

    # -- stack effects -------------------------------------------------------------------
    def _pop_mark(self) -> list[Any]:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index] is _MARK:
                items = self.stack[index + 1 :]
                del self.stack[index:]
                return items
        raise JoblibError("MARK expected on the stack", -1)

    def _pop(self) -> Any:
        if not self.stack:
            raise JoblibError("stack underflow", -1)
        return self.stack.pop()

    def _step(self, op: Any, arg: Any, pos: int) -> None:
        name = op.name
        try:
            handler = _HANDLERS.get(name)
            if handler is not None:
                handler(self, arg)
                return
            self._generic(op)
        except JoblibError as exc:
            raise JoblibError(f"{name} at {pos}: {exc}", pos) from exc

    def _generic(self, op: Any) -> None:
        before = op.stack_before
        if pickletools.markobject in before:
            self._pop_mark()
            for _ in range(before.index(pickletools.markobject)):
                self._pop()
        else:
            for _ in before:
                self._pop()
        for _ in op.stack_after:
            self.stack.append(_OPAQUE)


def _push_arg(w: _Walker, arg: Any) -> None:
    w.stack.append(arg)


def _push_none(w: _Walker, arg: Any) -> None:
    w.stack.append(None)


def _true(w: _Walker, arg: Any) -> None:
    w.stack.append(True)


def _false(w: _Walker, arg: Any) -> None:
    w.stack.append(False)


def _mark(w: _Walker, arg: Any) -> None:
    w.stack.append(_MARK)


def _global(w: _Walker, arg: Any) -> None:
    module, _, name = str(arg).partition(" ")
    w.stack.append(_Global(module, name))


def _stack_global(w: _Walker, arg: Any) -> None:
    name, module = w._pop(), w._pop()
    if isinstance(module, str) and isinstance(name, str):
        w.stack.append(_Global(module, name))
    else:
        w.stack.append(_OPAQUE)


def _tuple(w: _Walker, arg: Any) -> None:
    w.stack.append(tuple(w._pop_mark()))


def _tuple_n(n: int) -> Any:
    def handler(w: _Walker, arg: Any) -> None:
        items = [w._pop() for _ in range(n)][::-1]
        w.stack.append(tuple(items))

    return handler


def _empty_dict(w: _Walker, arg: Any) -> None:
    w.stack.append({})


def _dict(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    result: dict[Any, Any] = {}
    for key, value in zip(items[::2], items[1::2], strict=False):
        _set(result, key, value)
    w.stack.append(result)


def _set(target: Any, key: Any, value: Any) -> None:
    if isinstance(target, dict):
        try:
            target[key] = value
        except TypeError:
            pass


def _setitem(w: _Walker, arg: Any) -> None:
    value, key = w._pop(), w._pop()
    if not w.stack:
        raise JoblibError("stack underflow", -1)
    _set(w.stack[-1], key, value)


def _setitems(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    if not w.stack:
        raise JoblibError("stack underflow", -1)
    for key, value in zip(items[::2], items[1::2], strict=False):
        _set(w.stack[-1], key, value)


def _empty_list(w: _Walker, arg: Any) -> None:
    w.stack.append([])


def _list(w: _Walker, arg: Any) -> None:
    w.stack.append(list(w._pop_mark()))


def _append(w: _Walker, arg: Any) -> None:
    value = w._pop()
    if not w.stack:
        raise JoblibError("stack underflow", -1)
    if isinstance(w.stack[-1], list):
        w.stack[-1].append(value)


def _appends(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    if not w.stack:
        raise JoblibError("stack underflow", -1)
    if isinstance(w.stack[-1], list):
        w.stack[-1].extend(items)


def _put(w: _Walker, arg: Any) -> None:
    if not w.stack:
        raise JoblibError("PUT on an empty stack", -1)
    w.memo[int(arg)] = w.stack[-1]


def _memoize(w: _Walker, arg: Any) -> None:
    if not w.stack:
        raise JoblibError("MEMOIZE on an empty stack", -1)
    w.memo[len(w.memo)] = w.stack[-1]


def _get(w: _Walker, arg: Any) -> None:
    key = int(arg)
    if key not in w.memo:
        raise JoblibError(f"memo key {key} was never stored", -1)
    w.stack.append(w.memo[key])


def _pop_op(w: _Walker, arg: Any) -> None:
    if w.stack and w.stack[-1] is _MARK:
        w.stack.pop()
        return
    w._pop()


def _dup(w: _Walker, arg: Any) -> None:
    if not w.stack:
        raise JoblibError("DUP on an empty stack", -1)
    w.stack.append(w.stack[-1])


def _noop(w: _Walker, arg: Any) -> None:
    return None


def _instance(cls: Any, args: Any, *, via_init: bool) -> Any:
    """The value a class call produces, as far as joblib's hook is concerned."""
    if isinstance(cls, _Global):
        if cls.module == "numpy" and cls.name == "dtype" and isinstance(args, tuple) and args:
            return _Dtype(args[0])
        if cls.module == "copyreg" and cls.name == "_reconstructor" and isinstance(args, tuple):
            if args and isinstance(args[0], _Global):
                return _Obj(args[0])
            return _Obj(None, ambiguous=True)
        obj = _Obj(cls)
        if via_init and (cls.module, cls.name) == WRAPPER and isinstance(args, tuple):
            names = _WRAPPER_ARGS
            obj.attrs = {"allow_mmap": False, "numpy_array_alignment_bytes": 16}
            obj.attrs.update(dict(zip(names, args, strict=False)))
        return obj
    return _Obj(None, ambiguous=True)


def _reduce(w: _Walker, arg: Any) -> None:
    args, func = w._pop(), w._pop()
    w.stack.append(_instance(func, args, via_init=True))


def _newobj(w: _Walker, arg: Any) -> None:
    args, cls = w._pop(), w._pop()
    w.stack.append(_instance(cls, args, via_init=False))


def _newobj_ex(w: _Walker, arg: Any) -> None:
    w._pop()
    args, cls = w._pop(), w._pop()
    w.stack.append(_instance(cls, args, via_init=False))


def _obj(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    if not items:
        raise JoblibError("OBJ without a class", -1)
    w.stack.append(_instance(items[0], tuple(items[1:]), via_init=True))


def _inst(w: _Walker, arg: Any) -> None:
    items = w._pop_mark()
    module, _, name = str(arg).partition(" ")
    w.stack.append(_instance(_Global(module, name), tuple(items), via_init=True))


def _build(w: _Walker, arg: Any) -> None:
    state = w._pop()
    if not w.stack:
        raise JoblibError("BUILD on an empty stack", -1)
    target = w.stack[-1]
    if isinstance(target, _Dtype):
        if isinstance(target, _Dtype) and isinstance(state, tuple) and len(state) >= 8:
            elsize, flags = state[5], state[7]
            target.elsize = elsize if isinstance(elsize, int) else -1
            target.flags = flags if isinstance(flags, int) else 0
        return
    if not isinstance(target, _Obj):
        return
    slot_state: Any = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slot_state = state
    for part in (state, slot_state):
        if isinstance(part, dict):
            target.attrs.update({k: v for k, v in part.items() if isinstance(k, str)})
    if target.ambiguous and isinstance(state, dict) and {"shape", "dtype"} <= state.keys():
        raise JoblibError(
            "an object built by an unrecognised callable receives array-wrapper state",
            -1,
            rule="joblib.ambiguous_wrapper",
        )


_HANDLERS: Final[dict[str, Any]] = {
    **dict.fromkeys(
        (
            "INT",
            "BININT",
            "BININT1",
            "BININT2",
            "LONG",
            "LONG1",
            "LONG4",
            "STRING",
            "BINSTRING",
            "SHORT_BINSTRING",
            "UNICODE",
            "SHORT_BINUNICODE",
            "BINUNICODE",
            "BINUNICODE8",
            "BINBYTES",
            "SHORT_BINBYTES",
            "BINBYTES8",
            "FLOAT",
            "BINFLOAT",
        ),
        _push_arg,
    ),
    "NONE": _push_none,
    "NEWTRUE": _true,
    "NEWFALSE": _false,
    "MARK": _mark,
    "GLOBAL": _global,
    "STACK_GLOBAL": _stack_global,
    "TUPLE": _tuple,
    "EMPTY_TUPLE": _tuple_n(0),
    "TUPLE1": _tuple_n(1),
    "TUPLE2": _tuple_n(2),
    "TUPLE3": _tuple_n(3),
    "EMPTY_DICT": _empty_dict,
    "DICT": _dict,
    "SETITEM": _setitem,
    "SETITEMS": _setitems,
    "EMPTY_LIST": _empty_list,
    "LIST": _list,
    "APPEND": _append,
    "APPENDS": _appends,
    **dict.fromkeys(("PUT", "BINPUT", "LONG_BINPUT"), _put),
    "MEMOIZE": _memoize,
    **dict.fromkeys(("GET", "BINGET", "LONG_BINGET"), _get),
    "POP": _pop_op,
    "DUP": _dup,
    "REDUCE": _reduce,
    "NEWOBJ": _newobj,
    "NEWOBJ_EX": _newobj_ex,
    "OBJ": _obj,
    "INST": _inst,
    "BUILD": _build,
    **dict.fromkeys(("PROTO", "FRAME", "STOP"), _noop),
}


class _Reader(io.RawIOBase):
    """A file view of a memoryview starting at ``pos`` (genops needs read/readline/tell)."""

    def __init__(self, data: memoryview, pos: int) -> None:
        self._data = data
        self._pos = pos

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        chunk = self._data[self._pos : self._pos + len(buffer)]
        n = len(chunk)
        buffer[:n] = chunk
        self._pos += n
        return n

    def readline(self, size: int | None = -1) -> bytes:
        limit = len(self._data) if size is None or size < 0 else self._pos + size
        end = self._pos
        stop = min(limit, len(self._data))
        window = bytes(self._data[self._pos : stop])
        nl = window.find(b"\n")
        end = self._pos + (nl + 1 if nl >= 0 else len(window))
        line = bytes(self._data[self._pos : end])
        self._pos = end
        return line


def scan_joblib(
    ctx: ScanContext, data: memoryview, *, member: str | None, base_offset: int
) -> None:
    """Follow a joblib dump, skip its array blocks exactly, and scan every pickle byte."""
    walker = _Walker(data, ctx, member)
    try:
        end = walker.run()
    except JoblibError as exc:
        verdict = Verdict.MALICIOUS if exc.rule == "joblib.frame_straddle" else Verdict.ERROR
        ctx.report(
            exc.rule,
            Severity.HIGH,
            verdict,
            f"joblib stream cannot be followed: {exc}",
            member=member,
            offset=base_offset + max(exc.offset, 0),
        )
        end = -1
    for pos in walker.external:
        ctx.report(
            "joblib.external_array",
            Severity.MEDIUM,
            Verdict.UNKNOWN,
            "legacy NDArrayWrapper: joblib loads this array from a separate file next to the "
            "dump, with allow_pickle=True; scan that file too",
            member=member,
            offset=base_offset + pos,
        )
    for nested in walker.nested:
        ctx.adopt(nested.findings, nested.verdict)
    stop = end if end > 0 else len(data)
    _analyse_stitched(
        ctx, data, walker.blocks, stop, member=member, base_offset=base_offset, followed=end > 0
    )
    if end > 0 and end < len(data):
        ctx.report(
            "joblib.trailing_data",
            Severity.MEDIUM,
            Verdict.UNKNOWN,
            f"{len(data) - end} bytes follow the joblib pickle",
            member=member,
            offset=base_offset + end,
        )


def _analyse_stitched(
    ctx: ScanContext,
    data: memoryview,
    blocks: list[Block],
    stop: int,
    *,
    member: str | None,
    base_offset: int,
    followed: bool,
) -> None:
    """Run the real pickle machine over the opcode bytes with the array blocks cut out."""
    segments: list[tuple[int, int]] = []
    cursor = 0
    for block in blocks:
        segments.append((cursor, block.start))
        cursor = block.end
    segments.append((cursor, stop))
    stitched = b"".join(bytes(data[a:b]) for a, b in segments)
    result = ctx.pickle(stitched, member=member, adopt=False)

    def remap(offset: int | None) -> int | None:
        if offset is None:
            return None
        acc = 0
        for a, b in segments:
            if offset < acc + (b - a):
                return base_offset + a + (offset - acc)
            acc += b - a
        return base_offset + stop

    exempt = frozenset({WRAPPER_NAME}) if followed else frozenset()
    findings, verdict = exempted(result.findings, result.verdict, exempt)
    ctx.adopt([f.replace(offset=remap(f.offset)) for f in findings], verdict)
