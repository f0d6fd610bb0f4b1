"""Slotted value classes without :mod:`dataclasses`, for the scanner's start-up path.

Why not dataclasses? ``trainguard scan`` is measured against picklescan with its
start-up included (1,000 small checkpoints: about 0.2 s in all). The 24 dataclasses
on the scanner's import path cost 13 ms to create -- every generated method is
compiled from source text at import -- and importing :mod:`dataclasses` pulls in
:mod:`inspect` and :mod:`ast` for another 7 ms: a tenth of the whole run. A record
class lists its fields in ``__slots__`` (named as its constructor's parameters; the
order does not matter) and writes its own typed ``__init__``; equality, hashing,
``repr`` and :meth:`Record.replace` come from here, with the semantics the
dataclasses had (same class only, field by field; frozen records are hashable and
refuse assignment).

Modules off that path (the guard, the ledger, the manifest) keep using dataclasses.
"""

from __future__ import annotations

from typing import Any, Self


class Record:
    """A mutable record: field-wise ``==`` and ``repr``; unhashable, like a dataclass."""

    __slots__: tuple[str, ...] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.__slots__])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    # Defining __eq__ without __hash__ makes instances unhashable, as for a dataclass.

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (:func:`dataclasses.replace` for records)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        unknown = changes.keys() - values.keys()
        if unknown:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(unknown)}")
        values.update(changes)
        return type(self)(**values)


class Frozen:
    """Refuses assignment after ``__init__``; compares and hashes by identity.

    ``__init__`` of a subclass sets its fields with ``object.__setattr__`` (as a frozen
    dataclass's generated ``__init__`` does).
    """

    __slots__: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled field by field (scan workers send results back to the parent)."""
        return (_restore, (type(self), tuple([getattr(self, n) for n in self.__slots__])))


def _restore(cls: type[Frozen], values: tuple[Any, ...]) -> Frozen:
    """Rebuild a frozen object from :meth:`Frozen.__reduce__` without calling ``__init__``."""
    obj = cls.__new__(cls)
    for name, value in zip(cls.__slots__, values, strict=True):
        object.__setattr__(obj, name, value)
    return obj


class FrozenRecord(Frozen, Record):
    """An immutable record: compared and hashed by its fields."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self._values())
