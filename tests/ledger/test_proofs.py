"""Inclusion and consistency proofs served by a real ledger, checked against signed heads."""

from __future__ import annotations

import pytest

from trainguard.core.errors import LedgerError
from trainguard.core.keys import SigningKey
from trainguard.ledger import open_ledger
from trainguard.ledger.proofs import (
    prove_consistency,
    prove_inclusion,
    verify_consistency,
    verify_inclusion,
)


def test_event_is_provably_in_a_signed_head(ledger_url: str, signing_key: SigningKey) -> None:
    with open_ledger(ledger_url, signing_key=signing_key, head_interval=1000) as ledger:
        ledger.append_many(
            [{"kind": "step", "payload": {"i": i}, "rank": i % 3} for i in range(37)]
        )
        head = ledger.sign_head()
        head.verify_signature(signing_key.public)
        events = list(ledger.events())
        for event in (events[0], events[16], events[-1]):
            proof = prove_inclusion(ledger, event.seq, head.size)
            verify_inclusion(event.leaf_hash(), event.seq, head.size, proof, head.root)
            with pytest.raises(LedgerError):
                verify_inclusion(events[1].leaf_hash(), event.seq, head.size, proof, head.root)
        with pytest.raises(LedgerError):
            prove_inclusion(ledger, 38, 37)
        with pytest.raises(LedgerError):
            prove_inclusion(ledger, 1, 40)


def test_later_head_extends_earlier_one(ledger_url: str, signing_key: SigningKey) -> None:
    with open_ledger(ledger_url, signing_key=signing_key) as ledger:
        ledger.append_many([{"kind": "a", "payload": {"i": i}} for i in range(11)])
        old = ledger.sign_head()
        ledger.append_many([{"kind": "b", "payload": {"i": i}} for i in range(20)])
        new = ledger.sign_head()
        proof = prove_consistency(ledger, old.size, new.size)
        verify_consistency(old.size, new.size, old.root, new.root, proof)
        with pytest.raises(LedgerError):
            verify_consistency(old.size, new.size, new.root, new.root, proof)
        with pytest.raises(LedgerError):
            prove_consistency(ledger, 20, 11)
