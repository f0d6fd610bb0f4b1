"""Map torch storages to tensor names in a symbolic ``data.pkl`` value tree.

``torch.save`` writes every tensor as a call of a rebuild function
(``torch._utils._rebuild_tensor_v2`` and friends) on a persistent storage id
``('storage', <storage class>, key, location, numel)``; the bytes live in the
archive record ``data/<key>``. Walking the symbolic root that the pickle machine
built gives, for each tensor, its dotted name (nested dict keys and list indices
joined by ".") and its geometry, without importing torch. The manifest uses this
for per-tensor digests; ``load`` uses it to validate geometry against storage
sizes (CVE-2026-24747: an offset/stride outside the storage reads and writes out
of bounds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainguard.core.record import FrozenRecord
from trainguard.scan.picklevm.machine import PickleResult
from trainguard.scan.picklevm.values import Call, GlobalRef, PersistentRef
from trainguard.scan.policy import STORAGE_DTYPES

if TYPE_CHECKING:
    import logging


def _log() -> logging.Logger:
    """This module's logger, imported on first use (logging is slow to import)."""
    import logging

    return logging.getLogger(__name__)


_REBUILD_GEOMETRY = {
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_qtensor",
}
_REBUILD_WRAPPERS = {
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
}
_MODULE_CONTAINERS = ("_parameters", "_buffers", "_modules")
_MAX_NODES = 10_000_000
_LEAF_TYPES = frozenset({int, float, bool, str, bytes, type(None)})
"""Exact types of scalar nodes: the walk counts them but builds no dotted name for them."""


class TensorRef(FrozenRecord):
    """One tensor of a torch pickle: which storage it views and how.

    ``storage_key``: archive record name under ``data/`` (zip format) or the legacy
    root key; ``dtype``: element dtype (``float32``, ``bfloat16``; from the storage
    class or v3 dtype); ``storage_offset``: first element, in elements; ``shape`` and
    ``stride`` (in elements) per dimension; ``location``: device string recorded at
    save time; ``storage_numel``: elements in the storage as the persistent id records
    it (bytes for untyped); ``requires_grad`` where the rebuild call records it;
    ``rebuild``: the rebuild function used (``torch._utils._rebuild_tensor_v2``...).
    """

    __slots__ = (
        "dtype",
        "location",
        "rebuild",
        "requires_grad",
        "shape",
        "storage_key",
        "storage_numel",
        "storage_offset",
        "stride",
    )
    storage_key: str
    dtype: str
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    location: str
    storage_numel: int | None
    requires_grad: bool
    rebuild: str

    def __init__(
        self,
        storage_key: str,
        dtype: str,
        storage_offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        location: str,
        storage_numel: int | None,
        requires_grad: bool = False,
        rebuild: str = "",
    ) -> None:
        """Record one tensor's view of its storage."""
        _set = object.__setattr__
        _set(self, "storage_key", storage_key)
        _set(self, "dtype", dtype)
        _set(self, "storage_offset", storage_offset)
        _set(self, "shape", shape)
        _set(self, "stride", stride)
        _set(self, "location", location)
        _set(self, "storage_numel", storage_numel)
        _set(self, "requires_grad", requires_grad)
        _set(self, "rebuild", rebuild)


class StorageRef(FrozenRecord):
    """One storage named by a persistent id: archive record ``key`` under ``data/``,
    ``dtype`` of the storage class (``uint8`` for untyped storages), ``location``
    recorded at save time, and ``numel`` (elements; bytes for untyped storages)."""

    __slots__ = ("dtype", "key", "location", "numel")
    key: str
    dtype: str
    location: str
    numel: int

    def __init__(self, key: str, dtype: str, location: str, numel: int) -> None:
        """Record one storage."""
        _set = object.__setattr__
        _set(self, "key", key)
        _set(self, "dtype", dtype)
        _set(self, "location", location)
        _set(self, "numel", numel)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return None


def _storage_dtype(storage_type: Any) -> str | None:
    if not isinstance(storage_type, GlobalRef):
        return None
    if storage_type.name in STORAGE_DTYPES:
        return STORAGE_DTYPES[storage_type.name]
    if storage_type.name in ("UntypedStorage", "TypedStorage"):
        return "uint8"
    return None


def _storage_of(value: Any) -> StorageRef | None:
    """The storage a persistent reference names, or None when it is not one."""
    parts = _storage_parts(value)
    return None if parts is None else StorageRef(*parts)


def _storage_parts(value: Any) -> tuple[str, str, str, int] | None:
    """``(key, dtype, location, numel)`` of :func:`_storage_of`, without the object
    (the tensor walk needs only the fields, once per tensor)."""
    if not isinstance(value, PersistentRef):
        return None
    pid = value.pid
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
        return None
    kind = pid[0]
    if (kind if type(kind) is str else _text(kind)) != "storage":
        return None
    dtype = _storage_dtype(pid[1])
    key = pid[2]
    if type(key) is not str:
        key = _text(key)
    location = pid[3]
    if type(location) is not str:
        location = _text(location)
    numel = pid[4]
    if dtype is None or key is None or location is None or type(numel) is not int:
        return None
    return key, dtype, location, numel


def _ints(value: Any) -> tuple[int, ...] | None:
    if type(value) is tuple:  # the common case: a plain tuple of ints, returned as is
        for item in value:
            if type(item) is not int:
                return None
        return value
    if isinstance(value, Call) and value.target == "torch.Size":
        args = value.args
        value = args[0] if isinstance(args, tuple) and args else None
    if isinstance(value, (tuple, list)) and all(type(v) is int for v in value):
        return tuple(value)
    return None


TensorFields = tuple[str, str, int, tuple[int, ...], tuple[int, ...], str, int, bool, str]
"""The fields of a :class:`TensorRef`, in order (the walk for the scanner's geometry
check needs only these, and a frozen dataclass costs more to build than a tuple)."""


def _tensor(call: Call) -> TensorRef | None:
    """The tensor a rebuild call makes, or None when the call is not a well-formed one."""
    fields = _tensor_fields(call)
    return None if fields is None else TensorRef(*fields)


def _tensor_fields(call: Call) -> TensorFields | None:
    """:func:`_tensor`'s fields as a tuple."""
    func = call.func
    target = func.qualified if isinstance(func, GlobalRef) else None
    args = call.args
    if not isinstance(args, tuple):
        return None
    if target in _REBUILD_WRAPPERS and args and isinstance(args[0], Call):
        inner = _tensor_fields(args[0])
        if inner is None:
            return None
        requires_grad = len(args) > 1 and args[1] is True
        return (*inner[:7], requires_grad, inner[8])
    if target == "torch._tensor._rebuild_from_type_v2" and len(args) >= 3:
        func, fargs = args[0], args[2]
        if isinstance(func, GlobalRef) and isinstance(fargs, tuple):
            return _tensor_fields(Call(func, fargs, call.kind, call.offset))
        return None
    if target not in _REBUILD_GEOMETRY or len(args) < 4:
        return None
    storage = _storage_parts(args[0])
    offset = args[1]
    shape = _ints(args[2])
    stride = _ints(args[3])
    if storage is None or type(offset) is not int or shape is None or stride is None:
        _log().debug("malformed rebuild call at offset %s", call.offset)
        return None
    key, dtype, location, numel = storage
    if target == "torch._utils._rebuild_tensor_v3" and len(args) >= 7:
        dt = args[6]
        if isinstance(dt, GlobalRef) and dt.module == "torch":
            dtype = dt.name
    requires_grad = (
        target in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3")
        and len(args) > 4
        and args[4] is True
    )
    return (key, dtype, offset, shape, stride, location, numel, requires_grad, target or "")


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (bool, int)):
        return str(int(key)) if not isinstance(key, bool) else str(key)
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return f"<{type(key).__name__}>"


def torch_tensor_refs(root: Any) -> dict[str, TensorRef]:
    """Every tensor reachable from ``root`` by dotted name.

    Dict keys (plain dicts, OrderedDict state dicts, nested checkpoint dicts) and
    list/tuple indices are joined by "."; an ``nn.Module``'s ``_parameters``,
    ``_buffers`` and ``_modules`` levels are skipped so whole-module pickles give
    state_dict-style names. A tensor reached by two paths (tied weights) appears
    under both names.
    """
    return {name: TensorRef(*fields) for name, fields in torch_tensor_fields(root).items()}


def torch_tensor_fields(root: Any) -> dict[str, TensorFields]:
    """:func:`torch_tensor_refs` with each tensor as its :data:`TensorFields` tuple."""
    out: dict[str, TensorFields] = {}
    seen: set[int] = set()
    todo: list[tuple[Any, tuple[str, ...]]] = [(root, ())]
    nodes = 0
    leaves = _LEAF_TYPES
    while todo:
        value, path = todo.pop()
        nodes += 1
        if nodes > _MAX_NODES:
            _log().warning("tensor walk stopped after %d nodes", _MAX_NODES)
            break
        if type(value) in leaves:
            continue  # a scalar: still counted as a node, never holds a tensor
        if isinstance(value, Call):
            tensor = _tensor_fields(value)
            if tensor is not None:
                out[".".join(path)] = tensor
                continue
            if id(value) in seen:
                continue
            seen.add(id(value))
            children: list[tuple[Any, tuple[str, ...]]] = []
            if value.setitems:
                children.extend(
                    (v, path if type(v) in leaves else (*path, _key_text(k)))
                    for k, v in value.setitems
                )
            if value.appends:
                children.extend(
                    (v, path if type(v) in leaves else (*path, str(i)))
                    for i, v in enumerate(value.appends)
                )
            if value.has_state:
                state = value.state
                if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
                    state = state[0]
                children.append((state, path))
            todo.extend(reversed(children))
        elif isinstance(value, dict):
            if id(value) in seen:
                continue
            seen.add(id(value))
            items = [
                (
                    v,
                    path if type(v) in leaves or k in _MODULE_CONTAINERS else (*path, _key_text(k)),
                )
                for k, v in value.items()
            ]
            todo.extend(reversed(items))
        elif isinstance(value, (list, tuple)):
            if id(value) in seen:
                continue
            seen.add(id(value))
            todo.extend(
                reversed(
                    [
                        (v, path if type(v) in leaves else (*path, str(i)))
                        for i, v in enumerate(value)
                    ]
                )
            )
    return out


def storage_refs(result: PickleResult) -> list[StorageRef]:
    """Every distinct storage the pickle's persistent ids name, in order of appearance."""
    return [StorageRef(*fields) for fields in storage_fields(result)]


def storage_fields(result: PickleResult) -> list[tuple[str, str, str, int]]:
    """:func:`storage_refs` as ``(key, dtype, location, numel)`` tuples."""
    seen: dict[str, tuple[str, str, str, int]] = {}
    for ref in result.persistent_ids:
        storage = _storage_parts(ref)
        if storage is not None and storage[0] not in seen:
            seen[storage[0]] = storage
    return list(seen.values())
