"""RFC 6962 Merkle hashing and proofs against the Certificate Transparency test vectors.

The vectors are those of the CT reference implementation's merkle tree tests (leaf
inputs "", 00, 10, 2021, ...), which every RFC 6962 implementation agrees on.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.core.errors import LedgerError
from trainguard.ledger.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

INPUTS = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
LEAVES = [leaf_hash(x) for x in INPUTS]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (1-based leaf, tree size, audit path)
INCLUSION = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        2,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


def reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written literally (split at the largest power of 2 < n)."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + reference_mth(leaves[:k]) + reference_mth(leaves[k:])).digest()


def test_prefixes() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert EMPTY_ROOT.hex() == ROOTS[0]


@pytest.mark.parametrize("size", range(9))
def test_roots_match_vectors(size: int) -> None:
    assert root_of(LEAVES[:size]).hex() == ROOTS[size]
    frontier = Frontier()
    frontier.extend(LEAVES[:size])
    assert frontier.root().hex() == ROOTS[size]
    restored = Frontier.from_bytes(frontier.size, frontier.to_bytes())
    assert restored.root() == frontier.root()


@pytest.mark.parametrize(("leaf", "size", "path"), INCLUSION)
def test_inclusion_vectors(leaf: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof(LEAVES[:size], leaf - 1)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(ROOTS[size])
    verify_inclusion(LEAVES[leaf - 1], leaf - 1, size, proof, root)
    with pytest.raises(LedgerError):
        verify_inclusion(LEAVES[leaf - 1], leaf - 1, size, proof, bytes.fromhex(ROOTS[0]))


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_consistency_vectors(old: int, new: int, path: list[str]) -> None:
    proof = consistency_proof(LEAVES[:new], old)
    assert [p.hex() for p in proof] == path
    verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), proof)


def test_frontier_rejects_corrupt_state() -> None:
    with pytest.raises(LedgerError):
        Frontier(3, [b"x" * 32])


leaf_lists = st.lists(st.binary(min_size=0, max_size=12), min_size=1, max_size=70).map(
    lambda xs: [leaf_hash(x) for x in xs]
)


@settings(max_examples=60, deadline=None)
@given(leaf_lists, st.data())
def test_roots_agree_with_the_rfc_definition(leaves: list[bytes], data: st.DataObject) -> None:
    assert root_of(leaves) == reference_mth(leaves)
    frontier = Frontier()
    for i, leaf in enumerate(leaves):
        frontier.append(leaf)
        if i % 7 == 0:
            assert frontier.root() == reference_mth(leaves[: i + 1])
    assert frontier.root() == reference_mth(leaves)


@settings(max_examples=80, deadline=None)
@given(leaf_lists, st.data())
def test_inclusion_proofs_verify_and_bind(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    index = data.draw(st.integers(0, n - 1))
    root = root_of(leaves)
    proof = inclusion_proof(leaves, index)
    verify_inclusion(leaves[index], index, n, proof, root)
    # The proof binds the leaf and its position.
    with pytest.raises(LedgerError):
        verify_inclusion(hashlib.sha256(leaves[index]).digest(), index, n, proof, root)
    if n > 1:
        other = (index + 1) % n
        if leaves[other] != leaves[index]:
            with pytest.raises(LedgerError):
                verify_inclusion(leaves[index], other, n, proof, root)
    with pytest.raises(LedgerError):
        verify_inclusion(leaves[index], n, n, proof, root)  # index outside the tree
    if proof:
        with pytest.raises(LedgerError):
            verify_inclusion(leaves[index], index, n, proof[:-1], root)


@settings(max_examples=80, deadline=None)
@given(leaf_lists, st.data())
def test_consistency_proofs_verify_and_bind(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    old = data.draw(st.integers(0, n))
    proof = consistency_proof(leaves, old)
    old_root, new_root = root_of(leaves[:old]), root_of(leaves)
    verify_consistency(old, n, old_root, new_root, proof)
    if 0 < old < n:
        forged = hashlib.sha256(old_root).digest()
        with pytest.raises(LedgerError):
            verify_consistency(old, n, forged, new_root, proof)
        with pytest.raises(LedgerError):
            verify_consistency(old, n, old_root, forged, proof)
        # A rewritten history (one old leaf changed) cannot be proved consistent.
        changed = list(leaves)
        changed[data.draw(st.integers(0, old - 1))] = leaf_hash(b"rewritten")
        if changed[:old] != leaves[:old]:
            with pytest.raises(LedgerError):
                verify_consistency(
                    old, n, old_root, root_of(changed), consistency_proof(changed, old)
                )
