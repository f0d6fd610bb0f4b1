"""Inclusion and consistency proofs against a ledger (RFC 6962 / RFC 9162 section 2.1).

A proof lets someone who holds only a signed head check, without the whole ledger,
that an event is in it (inclusion) or that a later head extends an earlier one
without rewriting it (consistency). Sequence numbers are 1-based; the tree index of
entry ``seq`` is ``seq - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainguard.core.errors import LedgerError
from trainguard.ledger.api import Ledger
from trainguard.ledger.merkle import (
    consistency_proof,
    inclusion_proof,
)
from trainguard.ledger.merkle import (
    verify_consistency as _verify_consistency,
)
from trainguard.ledger.merkle import (
    verify_inclusion as _verify_inclusion,
)


def _leaves(ledger: Ledger, tree_size: int) -> list[bytes]:
    size = ledger.size()
    if not 0 <= tree_size <= size:
        raise LedgerError(f"{ledger.url}: tree size {tree_size} is outside 0..{size}")
    leaves = ledger.store.leaves(1, tree_size)
    if len(leaves) != tree_size:
        raise LedgerError(
            f"{ledger.url}: {tree_size - len(leaves)} entries below {tree_size} are missing; "
            "run 'trainguard ledger verify'"
        )
    return leaves


def prove_inclusion(ledger: Ledger, seq: int, tree_size: int) -> list[bytes]:
    """Audit path of entry ``seq`` in the tree of the first ``tree_size`` entries.

    Raises:
        LedgerError: ``seq`` or ``tree_size`` out of range, or entries missing.
    """
    if not 1 <= seq <= tree_size:
        raise LedgerError(f"entry {seq} is not in a tree of size {tree_size}")
    return inclusion_proof(_leaves(ledger, tree_size), seq - 1)


def prove_consistency(ledger: Ledger, old_size: int, new_size: int) -> list[bytes]:
    """Proof that the tree of ``old_size`` entries is a prefix of that of ``new_size``.

    Raises:
        LedgerError: sizes out of range or entries missing.
    """
    if not 0 <= old_size <= new_size:
        raise LedgerError(f"old size {old_size} must be between 0 and new size {new_size}")
    return consistency_proof(_leaves(ledger, new_size), old_size)


def verify_inclusion(
    leaf_hash: bytes, seq: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that the entry with ``leaf_hash`` is entry ``seq`` of the tree with ``root``.

    ``leaf_hash`` is ``LedgerEvent.leaf_hash()``; ``root`` is a signed head's root.

    Raises:
        LedgerError: the proof does not verify.
    """
    _verify_inclusion(leaf_hash, seq - 1, tree_size, proof, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``old_root`` of ``old_size`` entries is a prefix of ``new_root``.

    Raises:
        LedgerError: the proof does not verify.
    """
    _verify_consistency(old_size, new_size, old_root, new_root, proof)
