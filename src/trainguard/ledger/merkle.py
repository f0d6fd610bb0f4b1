"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and proof verification.

Leaves are hashed as ``SHA-256(0x00 || entry)`` and interior nodes as
``SHA-256(0x01 || left || right)``; the prefixes stop a leaf from being passed off as
an interior node (second-preimage attack). The tree over ``n`` leaves is the
left-balanced tree of RFC 6962 section 2.1 (split at the largest power of two below
``n``), whose root equals the "carry the odd node up" pairwise reduction used here.

This module calls ``hashlib`` directly rather than ``core.hashing``: the verifier
hashes millions of 33- to 65-byte strings and needs raw digests, not hex.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from trainguard.core.errors import LedgerError

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256 of the empty string (RFC 6962 section 2.1)."""

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """``SHA-256(0x00 || entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return _sha256(b"\x01" + left + right).digest()


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over a list of leaf hashes (pairwise reduction; the odd node is carried up)."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        odd = level[-1] if len(level) % 2 else None
        level = [
            _sha256(b"\x01" + a + b).digest()
            for a, b in zip(level[0::2], level[1::2], strict=False)
        ]
        if odd is not None:
            level.append(odd)
    return level[0]


class Frontier:
    """The right edge of a growing tree: one root per perfect subtree, O(log n) state.

    Appending a leaf merges equal-sized subtrees like a binary counter, so computing
    the root after each of ``n`` appends costs ``n`` leaf merges in total. The verifier
    streams a million leaves through one of these and reads off the root at every
    signed head's size without keeping the leaves.
    """

    __slots__ = ("size", "stack")

    def __init__(self, size: int = 0, stack: list[bytes] | None = None) -> None:
        """Start empty, or resume from a stored ``(size, stack)``."""
        stack = list(stack or [])
        if len(stack) != bin(size).count("1") or any(len(h) != HASH_SIZE for h in stack):
            raise LedgerError(f"corrupt Merkle frontier for size {size}")
        self.size = size
        self.stack = stack

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        n = self.size
        stack = self.stack
        while n & 1:
            leaf = _sha256(b"\x01" + stack.pop() + leaf).digest()
            n >>= 1
        stack.append(leaf)
        self.size += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """Add several leaf hashes in order."""
        stack = self.stack
        size = self.size
        for leaf in leaves:
            n = size
            while n & 1:
                leaf = _sha256(b"\x01" + stack.pop() + leaf).digest()
                n >>= 1
            stack.append(leaf)
            size += 1
        self.size = size

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        if not self.stack:
            return EMPTY_ROOT
        acc = self.stack[-1]
        for left in reversed(self.stack[:-1]):
            acc = _sha256(b"\x01" + left + acc).digest()
        return acc

    def to_bytes(self) -> bytes:
        """The stack concatenated (the size is stored beside it)."""
        return b"".join(self.stack)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Frontier:
        """Inverse of :meth:`to_bytes`."""
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])


def _largest_power_of_two_below(n: int) -> int:
    """k with k < n <= 2k (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """RFC 6962 ``PATH(m, D[n])`` for the leaf at 0-based ``index`` of ``leaves``."""
    n = len(leaves)
    if not 0 <= index < n:
        raise LedgerError(f"leaf index {index} is outside a tree of size {n}")

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        size = hi - lo
        if size == 1:
            return []
        k = _largest_power_of_two_below(size)
        if m < k:
            return [*path(m, lo, lo + k), root_of(leaves[lo + k : hi])]
        return [*path(m - k, lo + k, hi), root_of(leaves[lo : lo + k])]

    return path(index, 0, n)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """RFC 6962 ``PROOF(m, D[n])`` that the first ``old_size`` leaves are a prefix."""
    n = len(leaves)
    if not 0 <= old_size <= n:
        raise LedgerError(f"old size {old_size} is outside 0..{n}")
    if old_size in (0, n):
        return []

    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        size = hi - lo
        if m == size:
            return [] if complete else [root_of(leaves[lo:hi])]
        k = _largest_power_of_two_below(size)
        if m <= k:
            return [*subproof(m, lo, lo + k, complete), root_of(leaves[lo + k : hi])]
        return [*subproof(m - k, lo + k, hi, False), root_of(leaves[lo : lo + k])]

    return subproof(old_size, 0, n, True)


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 section 2.1.3.2: check that ``leaf`` is at ``index`` in the tree with ``root``.

    Raises:
        LedgerError: the proof does not verify.
    """
    if not 0 <= index < tree_size:
        raise LedgerError(f"inclusion proof: index {index} is outside a tree of size {tree_size}")
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            raise LedgerError("inclusion proof: too many hashes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerError("inclusion proof: too few hashes")
    if r != root:
        raise LedgerError("inclusion proof: computed root does not match")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 section 2.1.4.2: check that the tree ``old_root`` is a prefix of ``new_root``.

    Raises:
        LedgerError: the proof does not verify.
    """
    if not 0 <= old_size <= new_size:
        raise LedgerError(f"consistency proof: sizes {old_size} > {new_size}")
    if old_size == new_size:
        if proof or old_root != new_root:
            raise LedgerError("consistency proof: equal sizes need equal roots and no hashes")
        return
    if old_size == 0:
        if proof:
            raise LedgerError("consistency proof: from the empty tree needs no hashes")
        return
    if not proof:
        raise LedgerError("consistency proof: empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise LedgerError("consistency proof: too many hashes")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise LedgerError("consistency proof: too few hashes")
    if fr != old_root or sr != new_root:
        raise LedgerError("consistency proof: computed roots do not match")
