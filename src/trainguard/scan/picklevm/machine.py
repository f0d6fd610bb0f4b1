"""The symbolic pickle machine: CPython's unpickler, with every side effect replaced.

It follows ``Modules/_pickle.c`` (what ``pickle.load`` and ``torch.load`` run) and
``Lib/pickle.py`` opcode by opcode: one flat value stack with a mark stack and a
fence (underflow below the innermost MARK is an error, as in C), a memo dict,
``PROTO`` that may change mid-stream (it switches the Python 2 name mapping and
dotted-name lookups on and off), and ``FRAME`` regions. Where the two unpicklers
disagree, the disagreement itself is a finding: an opcode or argument that
straddles a frame end, a FRAME opened inside an unfinished frame, and STOP inside a
frame with bytes left (python/cpython#154848 class, fickling #317).

Nothing is imported, called or unpickled. Globals become :class:`GlobalRef`,
calls become :class:`Call`; the policy classifies every global as it is seen, so
a stream that references ``os.system`` and then breaks is still malicious
(nullifAI, B05): findings made before a parse error are kept. When the machine
must stop (truncation, underflow, bad opcode, limits), the bytes after the stop
are searched for dangerous names as a last resort (B32, exception-oriented
evasion). Where a real unpickler would raise but the machine can still follow the
stream (an unhashable key, a memo miss), it records the error and goes on, so that
a more lenient loader cannot run something the scanner did not look at.

Speed: one function with local variables dispatches on opcode ints read from the
buffer; the common opcodes of torch's protocol-2 ``data.pkl`` come first.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import re
import struct
import time
from collections.abc import Iterable
from typing import Any

from trainguard.core.findings import Finding, Severity, Verdict
from trainguard.core.limits import DEFAULT_LIMITS, Limits
from trainguard.core.record import FrozenRecord
from trainguard.scan.picklevm import opcodes as op
from trainguard.scan.picklevm.values import (
    SYMBOLIC_TYPES,
    Call,
    GlobalRef,
    LazyBytes,
    LazyStr,
    Opaque,
    OutOfBandBuffer,
    PersistentRef,
)
from trainguard.scan.policy import (
    ARG_CHECKS,
    DEFAULT_POLICY,
    STORAGE_DTYPES,
    Classification,
    Policy,
    combine_verdicts,
)

Buffer = bytes | bytearray | memoryview
"""Input accepted by the machine (an ``mmap.mmap`` works too: it indexes and finds)."""

INLINE_BYTES = 1 << 20
"""Byte/str arguments up to this size become real values; larger ones stay lazy."""

_CHECK_EVERY = 4096
"""Opcodes between checks of the deadline, the stack and the memo size."""

_unpack_d = struct.Struct(">d").unpack_from
_unpack_i = struct.Struct("<i").unpack_from
_unpack_I = struct.Struct("<I").unpack_from
_unpack_H = struct.Struct("<H").unpack_from
_unpack_Q = struct.Struct("<Q").unpack_from
_from_bytes = int.from_bytes

# Rule ids and their verdict and severity: the stable vocabulary of pickle findings.
RULES: dict[str, tuple[Verdict, Severity, str]] = {
    "pickle.dangerous_global": (
        Verdict.MALICIOUS,
        Severity.CRITICAL,
        "imports a callable that runs code, touches the OS or network, or unpickles",
    ),
    "pickle.evasive_name": (
        Verdict.MALICIOUS,
        Severity.CRITICAL,
        "imports a name spelled to evade denylists (attribute walk, non-identifier)",
    ),
    "pickle.dynamic_global": (
        Verdict.MALICIOUS,
        Severity.HIGH,
        "STACK_GLOBAL operands are computed at load time, so the import is hidden",
    ),
    "pickle.extension_code": (
        Verdict.MALICIOUS,
        Severity.HIGH,
        "EXT opcode imports through the copyreg registry; the target is not in the file",
    ),
    "pickle.build_on_callable": (
        Verdict.MALICIOUS,
        Severity.CRITICAL,
        "BUILD sets attributes on a function, class or module (modelscan #330 gadget)",
    ),
    "pickle.mutate_global": (
        Verdict.MALICIOUS,
        Severity.HIGH,
        "APPEND/SETITEM/ADDITEMS mutates an imported global object",
    ),
    "pickle.frame_violation": (
        Verdict.MALICIOUS,
        Severity.HIGH,
        "opcode or argument straddles a FRAME boundary (parser differential)",
    ),
    "pickle.unknown_global": (
        Verdict.UNKNOWN,
        Severity.MEDIUM,
        "imports a global outside the allowlist",
    ),
    "pickle.unsafe_arguments": (
        Verdict.UNKNOWN,
        Severity.MEDIUM,
        "allowlisted callable called with arguments outside its safe form",
    ),
    "pickle.unexpected_mutation": (
        Verdict.UNKNOWN,
        Severity.MEDIUM,
        "object of an allowlisted type mutated by an opcode real files never use on it",
    ),
    "pickle.dynamic_call": (
        Verdict.UNKNOWN,
        Severity.HIGH,
        "calls a value that is not an imported global",
    ),
    "pickle.bad_persistent_id": (
        Verdict.ERROR,
        Severity.HIGH,
        "persistent id is not a torch storage reference",
    ),
    "pickle.out_of_band_buffer": (
        Verdict.ERROR,
        Severity.MEDIUM,
        "NEXT_BUFFER refers to data outside the file",
    ),
    "pickle.parse_error": (
        Verdict.ERROR,
        Severity.HIGH,
        "the stream is not a valid pickle",
    ),
    "pickle.memo_error": (
        Verdict.ERROR,
        Severity.HIGH,
        "memo read of a slot never written",
    ),
    "pickle.runtime_error": (
        Verdict.ERROR,
        Severity.HIGH,
        "a real unpickler raises here (the machine keeps reading)",
    ),
    "pickle.limit_exceeded": (
        Verdict.ERROR,
        Severity.HIGH,
        "a resource limit stopped the scan",
    ),
    "pickle.timeout": (
        Verdict.ERROR,
        Severity.HIGH,
        "the time budget ran out before the pickle was read",
    ),
    "pickle.trailing_data": (
        Verdict.ERROR,
        Severity.MEDIUM,
        "bytes after the last pickle are not a pickle",
    ),
}
"""Every rule id the machine emits -> (verdict, severity, meaning)."""


class PickleResult(FrozenRecord):
    """What one pickle contains, as far as the machine could follow it.

    ``start``: offset of the first opcode inside the analysed buffer; ``end``: offset
    after STOP, or where parsing stopped; ``complete``: STOP was reached without a
    halting error; ``verdict``: combined verdict of ``findings`` (malicious > error >
    unknown > safe); ``findings``: everything found, in stream order of first
    occurrence; ``globals``: every global reference made (one per import opcode or
    resolved gadget); ``persistent_ids``: every persistent id, in order; ``root``: the
    value STOP returned (symbolic), None when incomplete; ``protocol``: the first PROTO
    opcode's value (None for protocol 0/1 streams without one); ``opcodes``: opcodes
    executed.
    """

    __slots__ = (
        "complete",
        "end",
        "findings",
        "globals",
        "opcodes",
        "persistent_ids",
        "protocol",
        "root",
        "start",
        "verdict",
    )
    start: int
    end: int
    complete: bool
    verdict: Verdict
    findings: tuple[Finding, ...]
    globals: tuple[GlobalRef, ...]
    persistent_ids: tuple[PersistentRef, ...]
    root: Any
    protocol: int | None
    opcodes: int

    def __init__(
        self,
        start: int,
        end: int,
        complete: bool,
        verdict: Verdict,
        findings: tuple[Finding, ...],
        globals: tuple[GlobalRef, ...],
        persistent_ids: tuple[PersistentRef, ...],
        root: Any,
        protocol: int | None,
        opcodes: int = 0,
    ) -> None:
        """Freeze one pickle's analysis."""
        _set = object.__setattr__
        _set(self, "start", start)
        _set(self, "end", end)
        _set(self, "complete", complete)
        _set(self, "verdict", verdict)
        _set(self, "findings", findings)
        _set(self, "globals", globals)
        _set(self, "persistent_ids", persistent_ids)
        _set(self, "root", root)
        _set(self, "protocol", protocol)
        _set(self, "opcodes", opcodes)

    def __repr__(self) -> str:
        """Without the value tree and the persistent ids (huge for real checkpoints)."""
        return (
            f"PickleResult(start={self.start}, end={self.end}, complete={self.complete}, "
            f"verdict={self.verdict!r}, findings={self.findings!r}, globals={self.globals!r}, "
            f"protocol={self.protocol}, opcodes={self.opcodes})"
        )


class StreamResult(FrozenRecord):
    """Several pickles read back to back from one buffer: each pickle in order
    (``pickles``), the combined ``verdict``, all ``findings`` of all pickles plus
    trailing-data findings, and ``end``, the offset after the last complete pickle
    (where trailing bytes start)."""

    __slots__ = ("end", "findings", "pickles", "verdict")
    pickles: tuple[PickleResult, ...]
    verdict: Verdict
    findings: tuple[Finding, ...]
    end: int

    def __init__(
        self,
        pickles: tuple[PickleResult, ...],
        verdict: Verdict,
        findings: tuple[Finding, ...],
        end: int,
    ) -> None:
        """Freeze a stream's analysis."""
        _set = object.__setattr__
        _set(self, "pickles", pickles)
        _set(self, "verdict", verdict)
        _set(self, "findings", findings)
        _set(self, "end", end)


class _Halt(Exception):
    """The machine cannot go on; carries the finding to report."""

    def __init__(self, rule: str, message: str, position: int) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.position = position


_LEGACY_INT_RE = re.compile(rb"\s*[-+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
_FLOAT_RE = re.compile(
    rb"\s*[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|inf|infinity|nan)\s*",
    re.IGNORECASE,
)
_GADGET_TARGETS = frozenset(
    (
        "builtins.getattr",
        "inspect.getattr_static",
        "pkgutil.resolve_name",
        "pydoc.locate",
        "importlib.import_module",
        "builtins.__import__",
    )
)
_CALL_CHECKED = _GADGET_TARGETS | frozenset(ARG_CHECKS)
"""Callables whose calls need more than the import's classification."""
_HASHABLE_SCALARS = (str, int, float, bool, bytes, complex, type(None), *SYMBOLIC_TYPES)
_UNHASHABLE = (list, dict, set, bytearray)
_STORAGE_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,256}")


def _as_buffer(data: Any) -> Any:
    """A buffer that supports ``[i]`` -> int, slicing and ``find`` without copying."""
    if isinstance(data, memoryview):
        base = data.obj
        if (
            data.contiguous
            and data.itemsize == 1
            and isinstance(base, (bytes, bytearray))
            and data.nbytes == len(base)
        ):
            return base
        return data.tobytes()
    return data


class _Machine:
    """State of one run; :meth:`run` is the hot loop."""

    def __init__(
        self,
        buf: Any,
        start: int,
        member: str | None,
        policy: Policy,
        limits: Limits,
        base_offset: int,
        deadline: float | None,
    ) -> None:
        self.buf = buf
        self.start = start
        self.member = member
        self.policy = policy
        self.limits = limits
        self.base = base_offset
        self.deadline = (
            deadline if deadline is not None else time.monotonic() + limits.time_budget_s
        )
        self.proto = 0
        self.first_proto: int | None = None
        self.findings: list[tuple[Finding, Verdict]] = []
        self.globals: list[GlobalRef] = []
        self.pids: list[PersistentRef] = []
        self.seen_rules: set[tuple[str, str]] = set()
        self.class_of: dict[str, Classification] = {}
        self.buffers = 0

    # ----------------------------------------------------------------- findings
    def report(
        self,
        rule: str,
        message: str,
        position: int,
        global_name: str | None = None,
        evidence: dict[str, Any] | None = None,
        dedupe: str | None = None,
    ) -> None:
        """Record a finding; ``dedupe`` collapses repeats of the same rule and key."""
        if dedupe is not None:
            key = (rule, dedupe)
            if key in self.seen_rules:
                return
            self.seen_rules.add(key)
        verdict, severity, _ = RULES[rule]
        finding = Finding(
            rule=rule,
            severity=severity,
            message=message,
            member=self.member,
            global_name=global_name,
            offset=self.base + position,
            evidence=evidence or {},
        )
        self.findings.append((finding, verdict))

    # ------------------------------------------------------------------ globals
    def make_global(self, module: str, name: str, position: int, via: str = "") -> GlobalRef:
        """Resolve an import as ``find_class`` would and classify it."""
        raw_module, raw_name = module, name
        if self.proto < 3:
            mapped = _compat_pickle.NAME_MAPPING.get((module, name))
            if mapped is not None:
                module, name = mapped
            else:
                module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        changed = (module, name) != (raw_module, raw_name)
        ref = GlobalRef(
            module,
            name,
            self.base + position,
            raw_module if changed else "",
            raw_name if changed else "",
            via,
        )
        self.globals.append(ref)
        qualified = ref.qualified
        cls = self.policy.classify(module, name)
        if changed and cls.verdict is not Verdict.MALICIOUS:
            raw_cls = self.policy.classify(raw_module, raw_name)
            if raw_cls.verdict is Verdict.MALICIOUS:
                cls = raw_cls
        self.class_of[qualified] = cls
        if cls.verdict is Verdict.SAFE:
            return ref
        spelled = f" (written {raw_module}.{raw_name})" if changed else ""
        how = f" via {via}" if via else ""
        if cls.verdict is Verdict.MALICIOUS:
            rule = "pickle.evasive_name" if cls.evasive else "pickle.dangerous_global"
            self.report(
                rule,
                f"pickle imports {_clip(qualified)}{spelled}{how}: {cls.reason}",
                position,
                qualified,
                {"via": via} if via else None,
                dedupe=qualified + via,
            )
        else:
            self.report(
                "pickle.unknown_global",
                f"pickle imports {_clip(qualified)}{spelled}{how}, which is not in the "
                "allowlist (use --allow if it is your own trusted class)",
                position,
                qualified,
                dedupe=qualified,
            )
        return ref

    def classification(self, ref: GlobalRef) -> Classification:
        """The classification recorded for ``ref`` when it was made."""
        found = self.class_of.get(ref.qualified)
        if found is None:
            found = self.policy.classify(ref.module, ref.name)
        return found

    # -------------------------------------------------------------------- calls
    def on_call(self, call: Call, position: int) -> None:
        """Check a call: what it calls, with which arguments, and gadget targets."""
        func = call.func
        if type(func) is GlobalRef:
            target = func.qualified
            if target not in _CALL_CHECKED:
                return  # the common case: a plain call of a global, classified already
            cls = self.classification(func)
            if cls.verdict is Verdict.SAFE:
                why = self.policy.check_call(func.qualified, call.args)
                if why is not None:
                    self.report(
                        "pickle.unsafe_arguments",
                        f"{func.qualified} called with unexpected arguments: {why}",
                        position,
                        func.qualified,
                        dedupe=func.qualified,
                    )
            self.resolve_gadget(func, call.args, position)
            return
        if isinstance(func, Call) and isinstance(func.func, GlobalRef):
            inner = func.func.qualified
            if inner in ("operator.attrgetter", "_operator.attrgetter"):
                self.derive(call.args, func.args, position, f"{inner} applied")
                return
            if inner in ("operator.methodcaller", "_operator.methodcaller"):
                self.derive(
                    call.args,
                    func.args[:1] if _is_tuple(func.args) else (),
                    position,
                    f"{inner} applied",
                )
                return
        if isinstance(func, (Opaque, Call, PersistentRef, OutOfBandBuffer)):
            self.report(
                "pickle.dynamic_call",
                f"{call.kind.upper()} calls {_describe(func)}, not an imported global",
                position,
                dedupe=str(position),
            )
            return
        self.report(
            "pickle.runtime_error",
            f"{call.kind.upper()} calls {_describe(func)}, which is not callable",
            position,
        )

    def resolve_gadget(self, func: GlobalRef, args: Any, position: int) -> None:
        """Name what a resolver gadget reaches: getattr(os, 'system') -> os.system."""
        target = func.qualified
        if not _is_tuple(args) or not args:
            return
        if target in ("builtins.getattr", "inspect.getattr_static") and len(args) >= 2:
            self.derive((args[0],), (args[1],), position, target)
        elif target in ("pkgutil.resolve_name", "pydoc.locate") and isinstance(args[0], str):
            text = args[0]
            module, _, name = text.partition(":") if ":" in text else text.rpartition(".")
            if module and name:
                self.make_global(module, name, position, via=target)
        elif target in ("importlib.import_module", "builtins.__import__") and isinstance(
            args[0], str
        ):
            module, _, name = args[0].rpartition(".")
            if module and name:
                self.make_global(module, name, position, via=target)

    def derive(self, objs: Any, names: Any, position: int, via: str) -> None:
        """``getattr(<global>, 'a.b')``-style access: classify the attribute reached."""
        if not _is_tuple(objs) or not objs or not _is_tuple(names) or not names:
            return
        obj, name = objs[0], names[0]
        if isinstance(obj, GlobalRef) and isinstance(name, str) and name:
            self.make_global(obj.module, f"{obj.name}.{name}", position, via=via)

    def mutate(self, target: Any, operation: str, position: int) -> bool:
        """Check a mutation of a symbolic object; True when ``target`` is a Call."""
        if isinstance(target, Call):
            func = target.func
            if isinstance(func, GlobalRef):
                cls = self.classification(func)
                if cls.verdict is Verdict.SAFE and not self.policy.allows_mutation(
                    func.qualified, operation
                ):
                    self.report(
                        "pickle.unexpected_mutation",
                        f"{operation.upper()} applied to the result of {func.qualified}, "
                        "which real checkpoints never do",
                        position,
                        func.qualified,
                        dedupe=func.qualified + operation,
                    )
            return True
        if isinstance(target, GlobalRef):
            rule = "pickle.build_on_callable" if operation == "build" else "pickle.mutate_global"
            self.report(
                rule,
                f"{operation.upper()} mutates the imported global {target.qualified} itself",
                position,
                target.qualified,
            )
        elif isinstance(target, PersistentRef):
            self.report(
                "pickle.unexpected_mutation",
                f"{operation.upper()} applied to a persistent object (storage)",
                position,
                dedupe="persistent" + operation,
            )
        elif not isinstance(target, Opaque):
            self.report(
                "pickle.runtime_error",
                f"{operation.upper()} applied to {_describe(target)}, which a real unpickler "
                "rejects",
                position,
            )
        return False

    # ---------------------------------------------------------------- hashing
    def hashable(self, value: Any, position: int) -> bool:
        """True when ``value`` can be a dict key or set item without hashing hazards.

        Deeply nested tuples crash CPython's hash with a C stack overflow, so the
        depth is checked iteratively first; lists/dicts inside make it unhashable,
        exactly as a real unpickler would find (TypeError).
        """
        if isinstance(value, _HASHABLE_SCALARS):
            return True
        if isinstance(value, _UNHASHABLE):
            self.report(
                "pickle.runtime_error",
                f"unhashable {type(value).__name__} used as a dict key or set item",
                position,
            )
            return False
        if not isinstance(value, (tuple, frozenset)):
            return True
        limit = self.limits.max_nesting_depth
        stack: list[tuple[Any, int]] = [(value, 1)]
        seen: set[int] = set()
        while stack:
            item, depth = stack.pop()
            if depth > limit:
                raise _Halt(
                    "pickle.limit_exceeded",
                    f"key nesting deeper than {limit} (max_nesting_depth)",
                    position,
                )
            if id(item) in seen:
                continue
            seen.add(id(item))
            for child in item:
                if isinstance(child, (tuple, frozenset)):
                    stack.append((child, depth + 1))
                elif isinstance(child, _UNHASHABLE):
                    self.report(
                        "pickle.runtime_error",
                        f"unhashable {type(child).__name__} inside a dict key or set item",
                        position,
                    )
                    return False
        return True

    # --------------------------------------------------------------- persistent
    def persistent(self, pid: Any, position: int) -> PersistentRef:
        """Record a persistent id and validate it as torch's storage reference."""
        ref = PersistentRef(pid, self.base + position)
        self.pids.append(ref)
        why = _torch_pid_problem(pid)
        if why is not None:
            self.report(
                "pickle.bad_persistent_id",
                f"persistent id {_describe(pid)} is not a torch storage reference: {why}",
                position,
                dedupe=why,
            )
        return ref

    # ---------------------------------------------------------------- the loop
    def run(self) -> PickleResult:
        """Execute opcodes from ``start`` until STOP or a halt."""
        buf = self.buf
        n = len(buf)
        pos = self.start
        stack: list[Any] = []
        marks: list[int] = []
        memo: dict[int, Any] = {}
        fence = 0
        frame_end = -1
        limit = n
        count = 0
        op_pos = pos
        root: Any = None
        complete = False
        limits = self.limits
        max_ops = limits.max_pickle_opcodes
        max_stack = limits.max_stack_depth
        max_memo = limits.max_memo_entries
        max_text = limits.max_string_bytes
        next_check = _CHECK_EVERY
        append = stack.append
        pop = stack.pop
        try:
            while True:
                # Invariant: limit == frame_end inside a frame, else n; so reaching the
                # frame's end is a case of pos >= limit and costs no test of its own.
                if pos >= limit:
                    if pos == frame_end:
                        frame_end = -1
                        limit = n
                    if pos >= limit:
                        raise _Halt(
                            "pickle.parse_error",
                            "pickle data was truncated (no STOP opcode)",
                            pos,
                        )
                count += 1
                if count >= next_check:
                    next_check += _CHECK_EVERY
                    self.check(count, len(stack) + len(marks), len(memo), pos)
                    if count > max_ops:
                        raise _Halt(
                            "pickle.limit_exceeded",
                            f"more than {max_ops} opcodes (max_pickle_opcodes)",
                            pos,
                        )
                    if len(stack) + len(marks) > max_stack:
                        raise _Halt(
                            "pickle.limit_exceeded",
                            f"stack deeper than {max_stack} (max_stack_depth)",
                            pos,
                        )
                    if len(memo) > max_memo:
                        raise _Halt(
                            "pickle.limit_exceeded",
                            f"more than {max_memo} memo entries (max_memo_entries)",
                            pos,
                        )
                op_pos = pos
                code = buf[pos]
                pos += 1
                # Branches are ordered by how often torch.save pickles use each opcode (each test
                # is a distinct code, so the order changes nothing but the number of comparisons).
                if code == 0x71:  # BINPUT
                    if pos + 1 > limit:
                        frame_end = self.cross(pos, 1, frame_end, n)
                        limit = n
                    if len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    memo[buf[pos]] = stack[-1]
                    pos += 1
                elif code == 0x68:  # BINGET
                    if pos + 1 > limit:
                        frame_end = self.cross(pos, 1, frame_end, n)
                        limit = n
                    idx = buf[pos]
                    pos += 1
                    try:
                        append(memo[idx])
                    except KeyError:
                        append(self.memo_miss(idx, op_pos))
                elif code == 0x4B:  # BININT1
                    if pos + 1 > limit:
                        frame_end = self.cross(pos, 1, frame_end, n)
                        limit = n
                    append(buf[pos])
                    pos += 1
                elif code == 0x8C or code == 0x58 or code == 0x8D:  # SHORT_BINUNICODE etc.
                    width = 1 if code == 0x8C else (4 if code == 0x58 else 8)
                    if pos + width > limit:
                        frame_end = self.cross(pos, width, frame_end, n)
                        limit = n
                    if width == 1:
                        size = buf[pos]
                    elif width == 4:
                        size = _unpack_I(buf, pos)[0]
                    else:
                        size = _unpack_Q(buf, pos)[0]
                    pos += width
                    if pos + size > limit:
                        frame_end = self.cross(pos, size, frame_end, n)
                        limit = n
                    if size > INLINE_BYTES:
                        append(LazyStr(self.base + pos, size))
                    else:
                        raw = buf[pos : pos + size]
                        try:
                            append(str(raw, "utf-8", "surrogatepass"))
                        except UnicodeDecodeError:
                            self.report(
                                "pickle.parse_error",
                                f"{op.opcode_name(code)} argument is not valid UTF-8",
                                op_pos,
                            )
                            append(str(raw, "latin-1"))
                    pos += size
                elif code == 0x28:  # MARK
                    marks.append(len(stack))
                    fence = len(stack)
                elif code == 0x52:  # REDUCE
                    if len(stack) - 2 < fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    args = pop()
                    func = stack[-1]
                    call = Call(func, args, "reduce", self.base + op_pos)
                    stack[-1] = call
                    # on_call returns at once for a plain global outside _CALL_CHECKED
                    if type(func) is not GlobalRef or func.qualified in _CALL_CHECKED:
                        self.on_call(call, op_pos)
                elif code == 0x74:  # TUPLE
                    if not marks:
                        raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                    mark = marks.pop()
                    fence = marks[-1] if marks else 0
                    items = tuple(stack[mark:])
                    del stack[mark:]
                    append(items)
                elif code == 0x29:  # EMPTY_TUPLE
                    append(())
                elif code == 0x89:  # NEWFALSE
                    append(False)
                elif code == 0x51:  # BINPERSID
                    if len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    stack[-1] = self.persistent(stack[-1], op_pos)
                elif code == 0x94:  # MEMOIZE
                    if len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    memo[len(memo)] = stack[-1]
                elif code == 0x7D:  # EMPTY_DICT
                    append({})
                elif code == 0x85:  # TUPLE1
                    if len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    stack[-1] = (stack[-1],)
                elif code == 0x86:  # TUPLE2
                    if len(stack) - 2 < fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    second = pop()
                    stack[-1] = (stack[-1], second)
                elif code == 0x75 or code == 0x73:  # SETITEMS / SETITEM
                    if code == 0x75:
                        if not marks:
                            raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                        mark = marks.pop()
                        fence = marks[-1] if marks else 0
                    else:
                        mark = len(stack) - 2
                    if mark > len(stack) or mark <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    if (len(stack) - mark) % 2:
                        raise _Halt(
                            "pickle.parse_error", "odd number of items for SETITEMS", op_pos
                        )
                    self.setitems(stack[mark - 1], stack[mark:], op_pos)
                    del stack[mark:]
                elif code == 0x47:  # BINFLOAT
                    if pos + 8 > limit:
                        frame_end = self.cross(pos, 8, frame_end, n)
                        limit = n
                    append(_unpack_d(buf, pos)[0])
                    pos += 8
                elif code == 0x4D:  # BININT2
                    if pos + 2 > limit:
                        frame_end = self.cross(pos, 2, frame_end, n)
                        limit = n
                    append(_unpack_H(buf, pos)[0])
                    pos += 2
                elif code == 0x5D:  # EMPTY_LIST
                    append([])
                elif code == 0x65 or code == 0x61:  # APPENDS / APPEND
                    if code == 0x65:
                        if not marks:
                            raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                        mark = marks.pop()
                        fence = marks[-1] if marks else 0
                    else:
                        mark = len(stack) - 1
                    if mark > len(stack) or mark <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    self.appends(stack[mark - 1], stack[mark:], op_pos)
                    del stack[mark:]
                elif code == 0x62:  # BUILD
                    if len(stack) - 2 < fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    state = pop()
                    target = stack[-1]
                    if self.mutate(target, "build", op_pos):
                        target.state = state
                        target.builds += 1
                elif code == 0x63 or code == 0x69:  # GLOBAL / INST
                    if code == 0x69:
                        if not marks:
                            raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                        mark = marks.pop()
                        fence = marks[-1] if marks else 0
                    line1, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    line2, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    module = self.decode_name(line1, code, op_pos)
                    name = self.decode_name(line2, code, op_pos)
                    ref = self.make_global(module, name, op_pos)
                    if code == 0x63:
                        append(ref)
                    else:
                        args = tuple(stack[mark:])
                        del stack[mark:]
                        call = Call(ref, args, "inst", self.base + op_pos)
                        append(call)
                        self.on_call(call, op_pos)
                elif code == 0x88:  # NEWTRUE
                    append(True)
                elif code == 0x4E:  # NONE
                    append(None)
                elif code == 0x87:  # TUPLE3
                    if len(stack) - 3 < fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    third = pop()
                    second = pop()
                    stack[-1] = (stack[-1], second, third)
                elif code == 0x4A:  # BININT
                    if pos + 4 > limit:
                        frame_end = self.cross(pos, 4, frame_end, n)
                        limit = n
                    append(_unpack_i(buf, pos)[0])
                    pos += 4
                elif code == 0x8A or code == 0x8B:  # LONG1 / LONG4
                    width = 1 if code == 0x8A else 4
                    if pos + width > limit:
                        frame_end = self.cross(pos, width, frame_end, n)
                        limit = n
                    size = buf[pos] if width == 1 else _unpack_i(buf, pos)[0]
                    pos += width
                    if size < 0:
                        raise _Halt(
                            "pickle.parse_error", "LONG pickle has negative byte count", op_pos
                        )
                    if size > limits.max_long_bytes:
                        raise _Halt(
                            "pickle.limit_exceeded",
                            f"LONG of {size} bytes exceeds max_long_bytes",
                            op_pos,
                        )
                    if pos + size > limit:
                        frame_end = self.cross(pos, size, frame_end, n)
                        limit = n
                    append(_from_bytes(buf[pos : pos + size], "little", signed=True))
                    pos += size
                elif code == 0x8F:  # EMPTY_SET
                    append(set())
                elif code == 0x72 or code == 0x6A:  # LONG_BINPUT / LONG_BINGET
                    if pos + 4 > limit:
                        frame_end = self.cross(pos, 4, frame_end, n)
                        limit = n
                    idx = _unpack_I(buf, pos)[0]
                    pos += 4
                    if code == 0x72:
                        if len(stack) <= fence:
                            raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                        memo[idx] = stack[-1]
                    else:
                        try:
                            append(memo[idx])
                        except KeyError:
                            append(self.memo_miss(idx, op_pos))
                elif code == 0x43 or code == 0x42 or code == 0x8E or code == 0x96:
                    # SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                    width = 1 if code == 0x43 else (4 if code == 0x42 else 8)
                    if pos + width > limit:
                        frame_end = self.cross(pos, width, frame_end, n)
                        limit = n
                    if width == 1:
                        size = buf[pos]
                    elif width == 4:
                        size = _unpack_I(buf, pos)[0]
                    else:
                        size = _unpack_Q(buf, pos)[0]
                    pos += width
                    if pos + size > limit:
                        frame_end = self.cross(pos, size, frame_end, n)
                        limit = n
                    if size > INLINE_BYTES:
                        append(LazyBytes(self.base + pos, size, code == 0x96))
                    elif code == 0x96:
                        append(bytearray(buf[pos : pos + size]))
                    else:
                        append(bytes(buf[pos : pos + size]))
                    pos += size
                elif code == 0x55 or code == 0x54:  # SHORT_BINSTRING / BINSTRING
                    width = 1 if code == 0x55 else 4
                    if pos + width > limit:
                        frame_end = self.cross(pos, width, frame_end, n)
                        limit = n
                    size = buf[pos] if width == 1 else _unpack_i(buf, pos)[0]
                    pos += width
                    if size < 0:
                        raise _Halt(
                            "pickle.parse_error",
                            "BINSTRING pickle has negative byte count",
                            op_pos,
                        )
                    if pos + size > limit:
                        frame_end = self.cross(pos, size, frame_end, n)
                        limit = n
                    if size > INLINE_BYTES:
                        append(LazyStr(self.base + pos, size))
                    else:
                        append(self.py2_str(bytes(buf[pos : pos + size]), op_pos))
                    pos += size
                elif code == 0x93:  # STACK_GLOBAL
                    if len(stack) - 2 < fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    name_v = pop()
                    module_v = pop()
                    append(self.stack_global(module_v, name_v, op_pos))
                elif code == 0x81 or code == 0x92:  # NEWOBJ / NEWOBJ_EX
                    need = 2 if code == 0x81 else 3
                    if len(stack) - need < fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    kwargs = pop() if code == 0x92 else None
                    args = pop()
                    kind = "newobj" if code == 0x81 else "newobj_ex"
                    call = Call(stack[-1], args, kind, self.base + op_pos, kwargs)
                    stack[-1] = call
                    self.on_call(call, op_pos)
                elif code == 0x6F:  # OBJ
                    if not marks:
                        raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                    mark = marks.pop()
                    fence = marks[-1] if marks else 0
                    if len(stack) - mark < 1:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    args = tuple(stack[mark + 1 :])
                    call = Call(stack[mark], args, "obj", self.base + op_pos)
                    del stack[mark:]
                    append(call)
                    self.on_call(call, op_pos)
                elif code == 0x30:  # POP
                    if marks and marks[-1] == len(stack):
                        marks.pop()
                        fence = marks[-1] if marks else 0
                    elif len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    else:
                        pop()
                elif code == 0x31:  # POP_MARK
                    if not marks:
                        raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                    mark = marks.pop()
                    fence = marks[-1] if marks else 0
                    del stack[mark:]
                elif code == 0x32:  # DUP
                    if len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    append(stack[-1])
                elif code == 0x6C or code == 0x64 or code == 0x91:  # LIST / DICT / FROZENSET
                    if not marks:
                        raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                    mark = marks.pop()
                    fence = marks[-1] if marks else 0
                    items_l = stack[mark:]
                    del stack[mark:]
                    if code == 0x6C:
                        append(items_l)
                    elif code == 0x64:
                        if len(items_l) % 2:
                            raise _Halt(
                                "pickle.parse_error", "odd number of items for DICT", op_pos
                            )
                        built: dict[Any, Any] = {}
                        self.setitems(built, items_l, op_pos)
                        append(built)
                    else:
                        append(frozenset(x for x in items_l if self.hashable(x, op_pos)))
                elif code == 0x90:  # ADDITEMS
                    if not marks:
                        raise _Halt("pickle.parse_error", "could not find MARK", op_pos)
                    mark = marks.pop()
                    fence = marks[-1] if marks else 0
                    if mark <= fence or mark > len(stack):
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    target = stack[mark - 1]
                    items_l = stack[mark:]
                    del stack[mark:]
                    if isinstance(target, set):
                        target.update(x for x in items_l if self.hashable(x, op_pos))
                    elif self.mutate(target, "additem", op_pos):
                        if target.additems is None:
                            target.additems = []
                        target.additems.extend(items_l)
                elif code == 0x2E:  # STOP
                    if len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    root = pop()
                    if frame_end > pos:
                        self.report(
                            "pickle.frame_violation",
                            f"STOP inside a frame with {frame_end - pos} frame bytes left "
                            "(unpicklers disagree where the next pickle starts)",
                            op_pos,
                        )
                    complete = True
                    break
                elif code == 0x80:  # PROTO
                    if pos + 1 > limit:
                        frame_end = self.cross(pos, 1, frame_end, n)
                        limit = n
                    proto = buf[pos]
                    pos += 1
                    if proto > op.HIGHEST_PROTOCOL:
                        raise _Halt(
                            "pickle.parse_error", f"unsupported pickle protocol: {proto}", op_pos
                        )
                    self.proto = proto
                    if self.first_proto is None:
                        self.first_proto = proto
                elif code == 0x95:  # FRAME
                    if pos + 8 > limit:
                        frame_end = self.cross(pos, 8, frame_end, n)
                        limit = n
                    size = _unpack_Q(buf, pos)[0]
                    pos += 8
                    if frame_end > pos:
                        raise _Halt(
                            "pickle.frame_violation",
                            "FRAME opened before the end of the current frame",
                            op_pos,
                        )
                    if pos + size > n:
                        raise _Halt(
                            "pickle.parse_error",
                            f"FRAME of {size} bytes runs past the end of the data",
                            op_pos,
                        )
                    if size:
                        frame_end = pos + size
                        limit = frame_end
                    else:
                        frame_end = -1
                        limit = n
                elif code == 0x70 or code == 0x67:  # PUT / GET
                    line, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    idx = self.decimal(line, op_pos)
                    if code == 0x70:
                        if len(stack) <= fence:
                            raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                        if idx is None or idx < 0:
                            self.report("pickle.runtime_error", "invalid PUT index", op_pos)
                        else:
                            memo[idx] = stack[-1]
                    elif idx is None:
                        append(Opaque("invalid GET index", self.base + op_pos))
                    else:
                        try:
                            append(memo[idx])
                        except KeyError:
                            append(self.memo_miss(idx, op_pos))
                elif code == 0x49:  # INT
                    line, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    append(self.text_int(line, op_pos))
                elif code == 0x4C:  # LONG
                    line, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    append(self.text_long(line, op_pos))
                elif code == 0x46:  # FLOAT
                    line, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    append(self.text_float(line, op_pos))
                elif code == 0x53:  # STRING
                    line, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    append(self.text_string(line, op_pos))
                elif code == 0x56:  # UNICODE
                    line, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    try:
                        append(str(line, "raw-unicode-escape"))
                    except UnicodeDecodeError:
                        self.report(
                            "pickle.parse_error", "UNICODE argument does not decode", op_pos
                        )
                        append(Opaque("undecodable UNICODE", self.base + op_pos))
                elif code == 0x50:  # PERSID
                    line, pos, frame_end = self.readline(pos, frame_end, n, max_text, op_pos)
                    limit = frame_end if frame_end >= 0 else n
                    try:
                        pid: Any = str(line, "ascii")
                    except UnicodeDecodeError:
                        self.report(
                            "pickle.parse_error",
                            "persistent IDs in protocol 0 must be ASCII strings",
                            op_pos,
                        )
                        pid = Opaque("non-ASCII PERSID", self.base + op_pos)
                    append(self.persistent(pid, op_pos))
                elif code == 0x82 or code == 0x83 or code == 0x84:  # EXT1/2/4
                    width = 1 if code == 0x82 else (2 if code == 0x83 else 4)
                    if pos + width > limit:
                        frame_end = self.cross(pos, width, frame_end, n)
                        limit = n
                    ext = _from_bytes(buf[pos : pos + width], "little")
                    pos += width
                    append(self.extension(ext, op.opcode_name(code), op_pos))
                elif code == 0x97:  # NEXT_BUFFER
                    self.report(
                        "pickle.out_of_band_buffer",
                        "NEXT_BUFFER needs out-of-band buffers, which no model loader passes",
                        op_pos,
                        dedupe="oob",
                    )
                    append(OutOfBandBuffer(self.buffers, self.base + op_pos))
                    self.buffers += 1
                elif code == 0x98:  # READONLY_BUFFER
                    if len(stack) <= fence:
                        raise _Halt("pickle.parse_error", "unpickling stack underflow", op_pos)
                    top = stack[-1]
                    if isinstance(top, bytearray):
                        stack[-1] = bytes(top)
                    elif isinstance(top, OutOfBandBuffer):
                        stack[-1] = OutOfBandBuffer(top.index, top.offset, True)
                    elif not isinstance(top, (bytes, LazyBytes, Call, Opaque)):
                        self.report(
                            "pickle.runtime_error",
                            f"READONLY_BUFFER on {_describe(top)}, which is not a buffer",
                            op_pos,
                        )
                else:
                    raise _Halt(
                        "pickle.parse_error",
                        f"invalid load key {op.opcode_name(code)} (not a pickle opcode)",
                        op_pos,
                    )
        except _Halt as halt:
            self.report(halt.rule, halt.message, halt.position)
            if halt.rule != "pickle.timeout":
                self.salvage(max(halt.position, self.start), n)
            end = halt.position
        except (IndexError, struct.error) as exc:
            # Every read is bounds-checked above; this is the fail-closed net.
            self.report("pickle.parse_error", f"malformed pickle: {exc}", op_pos)
            end = op_pos
        except RecursionError:
            self.report("pickle.limit_exceeded", "value nesting too deep", op_pos)
            end = op_pos
        else:
            end = pos
        return self.result(end, complete, root if complete else None, count)

    # ------------------------------------------------------------- helpers
    def check(self, count: int, depth: int, memo_size: int, position: int) -> None:
        """Periodic resource check: the deadline (sizes are checked by the caller)."""
        if time.monotonic() > self.deadline:
            raise _Halt(
                "pickle.timeout",
                f"time budget exhausted after {count} opcodes",
                position,
            )

    def cross(self, pos: int, size: int, frame_end: int, n: int) -> int:
        """Slow path of a read of ``size`` bytes at ``pos`` that passes the current limit.

        Returns the new frame end (-1 when the read legally leaves a finished frame).
        """
        if frame_end >= 0 and pos < frame_end:
            raise _Halt(
                "pickle.frame_violation",
                f"a {size}-byte argument at offset {self.base + pos} straddles the frame "
                f"ending at {self.base + frame_end}",
                pos,
            )
        if pos + size > n:
            raise _Halt(
                "pickle.parse_error",
                f"pickle data was truncated (needs {size} bytes at offset {self.base + pos}, "
                f"{max(n - pos, 0)} left)",
                pos,
            )
        return -1

    def readline(
        self, pos: int, frame_end: int, n: int, max_text: int, op_pos: int
    ) -> tuple[bytes, int, int]:
        """A newline-terminated argument, without the newline; frame rules as reads."""
        buf = self.buf
        if frame_end >= 0 and pos == frame_end:
            frame_end = -1
        limit = frame_end if frame_end >= 0 else n
        stop = min(limit, pos + max_text + 1)
        nl = buf.find(b"\n", pos, stop)
        if nl < 0:
            if stop < limit:
                raise _Halt(
                    "pickle.limit_exceeded",
                    f"text argument longer than {max_text} bytes (max_string_bytes)",
                    op_pos,
                )
            if frame_end >= 0 and buf.find(b"\n", frame_end, min(n, frame_end + max_text)) >= 0:
                raise _Halt(
                    "pickle.frame_violation",
                    "a text argument straddles the end of its frame",
                    op_pos,
                )
            raise _Halt("pickle.parse_error", "pickle data was truncated (no newline)", op_pos)
        return bytes(buf[pos:nl]), nl + 1, frame_end

    def decode_name(self, line: bytes, code: int, op_pos: int) -> str:
        """GLOBAL (UTF-8) and INST (ASCII) operands, as the C unpickler decodes them."""
        if not line:
            raise _Halt("pickle.parse_error", "pickle data was truncated (empty line)", op_pos)
        try:
            return str(line, "ascii" if code == 0x69 else "utf-8")
        except UnicodeDecodeError:
            self.report("pickle.parse_error", "global name does not decode", op_pos)
            return str(line, "latin-1")

    def stack_global(self, module: Any, name: Any, op_pos: int) -> Any:
        """STACK_GLOBAL: operands must be exact str (C checks PyUnicode_CheckExact)."""
        if type(module) is str and type(name) is str:
            return self.make_global(module, name, op_pos)
        if isinstance(module, (Call, Opaque, GlobalRef, PersistentRef, LazyStr)) or isinstance(
            name, (Call, Opaque, GlobalRef, PersistentRef, LazyStr)
        ):
            self.report(
                "pickle.dynamic_global",
                f"STACK_GLOBAL operands are {_describe(module)} and {_describe(name)}, not "
                "string literals: the import is computed at load time",
                op_pos,
            )
            return Opaque("dynamic STACK_GLOBAL", self.base + op_pos, (module, name))
        self.report(
            "pickle.runtime_error",
            f"STACK_GLOBAL requires str, got {_describe(module)} and {_describe(name)}",
            op_pos,
        )
        return Opaque("invalid STACK_GLOBAL", self.base + op_pos, (module, name))

    def extension(self, code: int, opname: str, op_pos: int) -> Any:
        """EXT1/2/4: resolve through the policy's registry; unknown codes fail closed."""
        if code <= 0:
            raise _Halt("pickle.parse_error", "EXT specifies code <= 0", op_pos)
        pair = self.policy.extension(code)
        if pair is None:
            self.report(
                "pickle.extension_code",
                f"{opname} code {code} is not registered: the imported global is not "
                "named in the file",
                op_pos,
                evidence={"code": code},
            )
            return Opaque(f"{opname} {code}", self.base + op_pos)
        return self.make_global(pair[0], pair[1], op_pos, via=f"{opname} code {code}")

    def memo_miss(self, idx: int, op_pos: int) -> Opaque:
        """A GET of an empty memo slot: a real unpickler raises; keep reading."""
        self.report("pickle.memo_error", f"memo value not found at index {idx}", op_pos)
        return Opaque(f"missing memo {idx}", self.base + op_pos)

    def setitems(self, target: Any, items: list[Any], op_pos: int) -> None:
        """SETITEM(S) and DICT: store pairs into a dict, or record them on a Call."""
        if isinstance(target, dict):
            for i in range(0, len(items), 2):
                key = items[i]
                # str and int keys are hashable (hashable() returns True at once for them)
                if type(key) is str or type(key) is int or self.hashable(key, op_pos):
                    target[key] = items[i + 1]
            return
        if isinstance(target, list):
            for i in range(0, len(items), 2):
                key = items[i]
                if type(key) is int and -len(target) <= key < len(target):
                    target[key] = items[i + 1]
                else:
                    self.report(
                        "pickle.runtime_error", "SETITEM on a list with a bad index", op_pos
                    )
            return
        if self.mutate(target, "setitem", op_pos):
            pairs = [(items[i], items[i + 1]) for i in range(0, len(items), 2)]
            if target.setitems is None:
                target.setitems = pairs
            else:
                target.setitems.extend(pairs)

    def appends(self, target: Any, items: list[Any], op_pos: int) -> None:
        """APPEND(S): extend a list, or record the items on a Call."""
        if isinstance(target, list):
            target.extend(items)
            return
        if not items:
            return
        if self.mutate(target, "append", op_pos):
            if target.appends is None:
                target.appends = list(items)
            else:
                target.appends.extend(items)

    def py2_str(self, raw: bytes, op_pos: int) -> str:
        """Decode a Python 2 str as torch.load does (UTF-8; pickle.load uses ASCII)."""
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError:
            return str(raw, "latin-1")

    def text_string(self, line: bytes, op_pos: int) -> Any:
        """STRING: quoted, escape-decoded (PyBytes_DecodeEscape), then decoded."""
        if len(line) >= 2 and line[0] == line[-1] and line[0] in (0x27, 0x22):
            try:
                raw = _codecs.escape_decode(line[1:-1])[0]
            except (ValueError, UnicodeDecodeError):
                self.report("pickle.parse_error", "STRING argument has a bad escape", op_pos)
                return Opaque("bad STRING", self.base + op_pos)
            return self.py2_str(bytes(raw), op_pos)
        self.report("pickle.parse_error", "the STRING opcode argument must be quoted", op_pos)
        return Opaque("unquoted STRING", self.base + op_pos)

    def text_int(self, line: bytes, op_pos: int) -> Any:
        """INT: C strtol(base 0) first, then int(s, 0); '00'/'01' are False/True."""
        match = _LEGACY_INT_RE.fullmatch(line)
        if match is not None and len(line) <= 4000:
            text = line.strip()
            sign = -1 if text[:1] == b"-" else 1
            body = text.lstrip(b"+-")
            if body[:2] in (b"0x", b"0X"):
                value = sign * int(body[2:], 16)
            elif len(body) > 1 and body[:1] == b"0":
                value = sign * int(body, 8)
            else:
                value = sign * int(body)
            if len(line) == 2 and value in (0, 1):
                # C: a 3-byte line (newline included) holding 0 or 1 is a bool.
                return bool(value)
            return value
        try:
            return int(line, 0)
        except ValueError:
            self.report("pickle.parse_error", "INT argument is not a number", op_pos)
            return Opaque("bad INT", self.base + op_pos)

    def text_long(self, line: bytes, op_pos: int) -> Any:
        """LONG: optional trailing 'L', then int(s, 0)."""
        if line.endswith(b"L"):
            line = line[:-1]
        try:
            return int(line, 0)
        except ValueError:
            self.report("pickle.parse_error", "LONG argument is not a number", op_pos)
            return Opaque("bad LONG", self.base + op_pos)

    def text_float(self, line: bytes, op_pos: int) -> Any:
        """FLOAT: a repr-style decimal."""
        if _FLOAT_RE.fullmatch(line) is not None:
            return float(line)
        self.report("pickle.parse_error", "FLOAT argument is not a number", op_pos)
        return Opaque("bad FLOAT", self.base + op_pos)

    def decimal(self, line: bytes, op_pos: int) -> int | None:
        """PUT/GET index: PyLong_FromString(s, NULL, 10)."""
        try:
            return int(line, 10)
        except ValueError:
            self.report("pickle.parse_error", "memo index is not a number", op_pos)
            return None

    def salvage(self, start: int, end: int) -> None:
        """After a halt: look for dangerous names in the bytes the machine could not read.

        A real loader may read those bytes differently (a parser differential is the
        whole point of exception-oriented evasion), so any dangerous module/name pair
        in them is reported. Only dangerous names are reported: unknown ones would be
        noise in binary data.
        """
        for module, name, position in salvage_names(self.buf, start, end):
            cls = self.policy.classify(module, name)
            if cls.verdict is Verdict.MALICIOUS and not cls.evasive:
                qualified = f"{module}.{name}"
                self.report(
                    "pickle.dangerous_global",
                    f"bytes after the point where parsing stopped name {_clip(qualified)} "
                    f"({cls.reason}); a lenient loader may import it",
                    position,
                    qualified,
                    {"salvaged": True},
                    dedupe="salvage" + qualified,
                )

    def result(self, end: int, complete: bool, root: Any, count: int) -> PickleResult:
        """Freeze the run into a :class:`PickleResult`."""
        findings = tuple(f for f, _ in self.findings)
        verdict = combine_verdicts(v for _, v in self.findings)
        return PickleResult(
            start=self.start,
            end=end,
            complete=complete,
            verdict=verdict,
            findings=findings,
            globals=tuple(self.globals),
            persistent_ids=tuple(self.pids),
            root=root,
            protocol=self.first_proto,
            opcodes=count,
        )


_SALVAGE_WINDOW = 16 << 20
_TOKEN_RE = re.compile(rb"[A-Za-z_][A-Za-z0-9_.]{0,200}")


def salvage_names(buf: Any, start: int, end: int) -> Iterable[tuple[str, str, int]]:
    """Candidate (module, name, offset) pairs in raw bytes: adjacent identifier tokens.

    Covers the GLOBAL text form (``cos\\nsystem\\n``), STACK_GLOBAL operands in
    SHORT_BINUNICODE/BINUNICODE (a few bytes apart), and ``module.attr`` tokens.
    """
    stop = min(end, start + _SALVAGE_WINDOW)
    prev: tuple[str, int] | None = None
    for match in _TOKEN_RE.finditer(buf, start, stop):
        token = match.group().decode("ascii").strip(".")
        if not token:
            continue
        if "." in token:
            module, _, name = token.rpartition(".")
            if module and name:
                yield module, name, match.start()
        if prev is not None and match.start() - prev[1] <= 9:
            yield prev[0], token, match.start()
            if prev[0][:1] in ("c", "i") and len(prev[0]) > 1:
                # GLOBAL/INST text form: the opcode byte is a letter glued to the module.
                yield prev[0][1:], token, match.start()
        prev = (token, match.end())


def _is_tuple(value: Any) -> bool:
    return isinstance(value, tuple)


def _clip(text: str, size: int = 160) -> str:
    return text if len(text) <= size else text[:size] + "..."


def _describe(value: Any) -> str:
    """A short, bounded description of a value for messages (never recursive)."""
    if isinstance(value, GlobalRef):
        return f"global {_clip(value.qualified)}"
    if isinstance(value, Call):
        return f"the result of calling {_clip(value.target or 'a computed value')}"
    if isinstance(value, str):
        return repr(_clip(value, 60))
    if isinstance(value, (int, float, bool)) or value is None:
        text = repr(value) if not isinstance(value, int) or value.bit_length() < 200 else "int"
        return text
    if isinstance(value, tuple):
        return f"a {len(value)}-tuple"
    return f"a {type(value).__name__}"


def _torch_pid_problem(pid: Any) -> str | None:
    """Why ``pid`` is not one of torch's persistent ids, or None when it is.

    Zip format: ``('storage', <storage class>, key, location, numel)``. Legacy
    format: the same plus ``view_metadata`` (None or ``(key, offset, size)``), or
    ``('module', <class>, source_file, source)`` for whole-module pickles.
    """
    if not isinstance(pid, tuple) or not pid:
        return "not a tuple"
    kind = pid[0]
    if isinstance(kind, bytes):
        kind = kind.decode("ascii", "replace")
    if kind == "module":
        if len(pid) == 4 and isinstance(pid[1], GlobalRef):
            return None
        return "malformed ('module', class, file, source) id"
    if kind != "storage":
        return f"typename {_describe(kind)} is not 'storage'"
    if len(pid) not in (5, 6):
        return f"storage id has {len(pid)} fields, expected 5 (or 6 in the legacy format)"
    storage_type, key, location, numel = pid[1], pid[2], pid[3], pid[4]
    if not isinstance(storage_type, GlobalRef) or not _is_storage_class(storage_type):
        return f"storage type {_describe(storage_type)} is not a torch storage class"
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or not _STORAGE_KEY_RE.fullmatch(key) or ".." in key:
        return f"storage key {_describe(key)} is not a plain record name"
    if isinstance(location, bytes):
        location = location.decode("ascii", "replace")
    if not isinstance(location, str) or not location or not location.isprintable():
        return f"location {_describe(location)} is not a device string"
    if type(numel) is not int or numel < 0:
        return f"numel {_describe(numel)} is not a non-negative int"
    if len(pid) == 6:
        view = pid[5]
        if view is not None and not (
            isinstance(view, tuple)
            and len(view) == 3
            and isinstance(view[0], (str, bytes))
            and type(view[1]) is int
            and type(view[2]) is int
            and view[1] >= 0
            and view[2] >= 0
        ):
            return "legacy view metadata is not (key, offset, size)"
    return None


def _is_storage_class(ref: GlobalRef) -> bool:
    if ref.module == "torch" and (ref.name in STORAGE_DTYPES or ref.name == "UntypedStorage"):
        return True
    if ref.module == "torch.cuda" and ref.name in STORAGE_DTYPES:
        return True
    return ref.module == "torch.storage" and ref.name in ("UntypedStorage", "TypedStorage")


def analyze_pickle(
    data: Buffer,
    *,
    start: int = 0,
    member: str | None = None,
    policy: Policy | None = None,
    limits: Limits = DEFAULT_LIMITS,
    base_offset: int = 0,
    deadline: float | None = None,
) -> PickleResult:
    """Analyse ONE pickle starting at ``data[start]``.

    Args:
        data: the bytes (or a bytearray, mmap, or memoryview; a memoryview that does
            not cover its whole base object is copied).
        start: offset of the first opcode.
        member: archive member name copied into every finding.
        policy: allow/deny policy; the default policy when None.
        limits: resource limits.
        base_offset: added to every offset in findings and values (position of
            ``data`` inside the enclosing file).
        deadline: ``time.monotonic()`` value after which the scan stops with a
            ``pickle.timeout`` finding; default now + ``limits.time_budget_s``.

    Returns:
        The pickle's findings, globals, persistent ids, symbolic root value and verdict.
    """
    buf = _as_buffer(data)
    machine = _Machine(buf, start, member, policy or DEFAULT_POLICY, limits, base_offset, deadline)
    return machine.run()


def analyze_pickle_stream(
    data: Buffer,
    *,
    member: str | None = None,
    policy: Policy | None = None,
    limits: Limits = DEFAULT_LIMITS,
    base_offset: int = 0,
    deadline: float | None = None,
    start: int = 0,
    max_pickles: int | None = None,
    allow_trailing: bool = False,
) -> StreamResult:
    """Analyse several pickles back to back (legacy torch files stack five).

    Reading stops at the end of the data, after ``max_pickles`` pickles, or at the
    first pickle that does not complete. Bytes left after the last complete pickle
    are a ``pickle.trailing_data`` finding unless ``allow_trailing`` (the caller
    knows what follows, e.g. legacy raw storages); a dangerous name in them is
    reported either way.
    """
    buf = _as_buffer(data)
    policy = policy or DEFAULT_POLICY
    if deadline is None:
        deadline = time.monotonic() + limits.time_budget_s
    size = len(buf)
    pos = start
    pickles: list[PickleResult] = []
    findings: list[Finding] = []
    verdicts: list[Verdict] = []
    wanted = max_pickles if max_pickles is not None else limits.max_pickles_per_stream
    while pos < size and len(pickles) < wanted:
        result = analyze_pickle(
            buf,
            start=pos,
            member=member,
            policy=policy,
            limits=limits,
            base_offset=base_offset,
            deadline=deadline,
        )
        if result.complete or not pickles:
            # A complete pickle, or the first one (a broken first pickle is a broken file).
            pickles.append(result)
            findings.extend(result.findings)
            verdicts.extend(RULES[f.rule][0] for f in result.findings)
            if not result.complete:
                break
            pos = result.end
            continue
        # Bytes after a complete pickle that do not form another one.
        if allow_trailing:
            # The caller knows what follows (legacy raw storages); keep only the
            # dangerous imports the attempt made before it broke.
            kept = [
                f
                for f in result.findings
                if f.rule in ("pickle.dangerous_global", "pickle.evasive_name")
                and not f.evidence.get("salvaged")
            ]
        else:
            kept = _trailing_findings(buf, pos, size, member, policy, base_offset)
            kept.extend(
                f
                for f in result.findings
                if RULES[f.rule][0] is Verdict.MALICIOUS and not f.evidence.get("salvaged")
            )
        findings.extend(kept)
        verdicts.extend(RULES[f.rule][0] for f in kept)
        break
    complete_end = start
    for result in pickles:
        if not result.complete:
            break
        complete_end = result.end
    if pos < size and len(pickles) >= wanted and pickles[-1].complete and not allow_trailing:
        trailing = _trailing_findings(buf, pos, size, member, policy, base_offset)
        findings.extend(trailing)
        verdicts.extend(RULES[f.rule][0] for f in trailing)
    if not pickles and size <= start:
        finding = Finding(
            rule="pickle.parse_error",
            severity=RULES["pickle.parse_error"][1],
            message="empty stream: no pickle to read",
            member=member,
            offset=base_offset + start,
        )
        findings.append(finding)
        verdicts.append(Verdict.ERROR)
    return StreamResult(
        pickles=tuple(pickles),
        verdict=combine_verdicts(verdicts),
        findings=tuple(findings),
        end=complete_end,
    )


def _trailing_findings(
    buf: Any, pos: int, size: int, member: str | None, policy: Policy, base_offset: int
) -> list[Finding]:
    _verdict, severity, _ = RULES["pickle.trailing_data"]
    out = [
        Finding(
            rule="pickle.trailing_data",
            severity=severity,
            message=f"{size - pos} bytes after the last pickle's STOP are not read by "
            "pickle loaders (hidden data)",
            member=member,
            offset=base_offset + pos,
            evidence={"bytes": size - pos},
        )
    ]
    for module, name, position in salvage_names(buf, pos, size):
        cls = policy.classify(module, name)
        if cls.verdict is Verdict.MALICIOUS and not cls.evasive:
            out.append(
                Finding(
                    rule="pickle.dangerous_global",
                    severity=RULES["pickle.dangerous_global"][1],
                    message=f"trailing bytes name {module}.{name} ({cls.reason})",
                    member=member,
                    global_name=f"{module}.{name}",
                    offset=base_offset + position,
                    evidence={"salvaged": True},
                )
            )
    return out
