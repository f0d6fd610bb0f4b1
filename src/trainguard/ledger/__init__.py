"""Append-only, tamper-evident ledger of training events (RFC 6962 Merkle tree).

SQLite by default (one file per run), PostgreSQL for a cluster. See docs/ledger.md.
"""

from __future__ import annotations

from trainguard.ledger.api import Ledger, open_ledger
from trainguard.ledger.events import EventInput, LedgerEvent
from trainguard.ledger.proofs import (
    prove_consistency,
    prove_inclusion,
    verify_consistency,
    verify_inclusion,
)
from trainguard.ledger.tree_head import SignedTreeHead
from trainguard.ledger.verify import VerifyReport, verify_ledger

__all__ = [
    "EventInput",
    "Ledger",
    "LedgerEvent",
    "SignedTreeHead",
    "VerifyReport",
    "open_ledger",
    "prove_consistency",
    "prove_inclusion",
    "verify_consistency",
    "verify_inclusion",
    "verify_ledger",
]
