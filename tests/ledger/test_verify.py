"""verify_ledger finds every kind of tampering, on both back ends, and passes clean ledgers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories import ledger_tamper as tamper
from trainguard.core.errors import LedgerError
from trainguard.core.findings import Severity
from trainguard.core.keys import SigningKey, generate_key
from trainguard.ledger import SignedTreeHead, open_ledger
from trainguard.ledger.verify import VerifyReport, verify_ledger

N = 40


def fill(
    url: str, key: SigningKey, n: int = N, *, interval: int = 10, final_head: bool = True
) -> None:
    """``n`` events written by a key holder, heads every ``interval`` and one at the end."""
    with open_ledger(url, signing_key=key, head_interval=interval) as ledger:
        for i in range(n):
            ledger.append("step", {"step": i, "loss": 1.0 / (i + 1)}, run="r", rank=i % 4)
        if final_head:
            ledger.sign_head()


def rules(report: VerifyReport) -> dict[str, list[int | None]]:
    out: dict[str, list[int | None]] = {}
    for f in report.findings:
        out.setdefault(f.rule, []).append(f.evidence.get("seq"))
    return out


def test_clean_ledger_verifies(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    report = verify_ledger(ledger_url, signing_key.public)
    assert report.findings == ()
    assert report.size == N and report.covered == N
    assert report.heads_checked == 5  # 10, 20, 30, 40 and the final one
    with open_ledger(ledger_url) as ledger:
        assert report.root_hex == ledger.heads()[-1].root_hex


def test_uncovered_tail_is_low(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key, 25, final_head=False)
    report = verify_ledger(ledger_url, signing_key.public)
    assert [(f.rule, f.severity) for f in report.findings] == [
        ("ledger.unsigned_tail", Severity.LOW)
    ]
    assert report.covered == 20


def test_unsigned_ledger_is_reported(ledger_url: str, signing_key: SigningKey) -> None:
    with open_ledger(ledger_url) as ledger:
        ledger.append_many([{"kind": "k", "payload": {"i": i}} for i in range(5)])
    report = verify_ledger(ledger_url, signing_key.public)
    assert [(f.rule, f.severity) for f in report.findings] == [("ledger.unsigned", Severity.HIGH)]


def test_empty_ledger_is_clean(ledger_url: str, signing_key: SigningKey) -> None:
    open_ledger(ledger_url).close()
    report = verify_ledger(ledger_url, signing_key.public)
    assert report.ok and report.size == 0


def test_edited_entry(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    tamper.edit_payload(ledger_url, 17, {"step": 16, "loss": 0.0})
    found = rules(verify_ledger(ledger_url, signing_key.public))
    assert found["ledger.entry_modified"] == [17]
    assert "ledger.root_mismatch" in found


def test_edited_entry_with_rewritten_hash_is_caught_by_the_heads(
    ledger_url: str, signing_key: SigningKey
) -> None:
    fill(ledger_url, signing_key)
    tamper.edit_payload(ledger_url, 17, {"step": 16, "loss": 0.0}, rehash=True)
    report = verify_ledger(ledger_url, signing_key.public)
    found = rules(report)
    assert "ledger.entry_modified" not in found  # the stored hash was forged to match...
    mismatches = [f for f in report.findings if f.rule == "ledger.root_mismatch"]
    assert mismatches  # ...but no signed root agrees any more
    assert {f.evidence["last_good_size"] for f in mismatches} == {10}  # change lies in 11..20


def test_deleted_entry(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    tamper.delete(ledger_url, 23)
    found = rules(verify_ledger(ledger_url, signing_key.public))
    assert found["ledger.entry_deleted"] == [23]
    assert "ledger.entry_modified" not in found


def test_deleted_entry_with_renumbering(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    tamper.delete(ledger_url, 23, renumber=True)
    report = verify_ledger(ledger_url, signing_key.public)
    found = rules(report)
    assert found["ledger.entry_deleted"] == [23]
    assert "ledger.entry_modified" not in found
    assert "ledger.truncated" in found  # the final head covered 40 entries; 39 remain


def test_inserted_entry(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    tamper.insert(ledger_url, 12, "finding", {"kind": "fake"})
    found = rules(verify_ledger(ledger_url, signing_key.public))
    assert found["ledger.entry_inserted"] == [12]
    assert "ledger.entry_modified" not in found
    assert "ledger.root_mismatch" in found


@pytest.mark.parametrize(("a", "b"), [(5, 31), (8, 9)])
def test_swapped_entries(ledger_url: str, signing_key: SigningKey, a: int, b: int) -> None:
    fill(ledger_url, signing_key)
    tamper.swap(ledger_url, a, b)
    report = verify_ledger(ledger_url, signing_key.public)
    found = rules(report)
    assert sorted(found["ledger.reordered"]) == [a, b]
    assert set(found) <= {"ledger.reordered", "ledger.root_mismatch"}


def test_moved_entry(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    tamper.move(ledger_url, 30, 12)
    found = rules(verify_ledger(ledger_url, signing_key.public))
    assert found["ledger.reordered"] == [12]
    assert set(found) <= {"ledger.reordered", "ledger.root_mismatch"}


def test_truncation_against_a_head_kept_elsewhere(
    ledger_url: str, signing_key: SigningKey, tmp_path: Path
) -> None:
    fill(ledger_url, signing_key)
    with open_ledger(ledger_url, signing_key=signing_key) as ledger:
        kept = tmp_path / "head.json"
        kept.write_text(ledger.sign_head().to_json())
    tamper.truncate(ledger_url, 25)  # entries and the heads that covered them are gone
    head = SignedTreeHead.from_path(kept)
    inside = verify_ledger(ledger_url, signing_key.public)
    assert "ledger.truncated" not in rules(inside)  # the ledger alone cannot tell...
    found = rules(verify_ledger(ledger_url, signing_key.public, head=head))
    assert "ledger.truncated" in found  # ...the head kept elsewhere can


def test_given_head_root_must_match(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    with open_ledger(ledger_url, signing_key=signing_key) as ledger:
        head = ledger.sign_head()
    tamper.edit_payload(ledger_url, 3, {"x": 1}, rehash=True)
    report = verify_ledger(ledger_url, signing_key.public, head=head)
    origins = {
        f.evidence.get("origin") for f in report.findings if f.rule == "ledger.root_mismatch"
    }
    assert "given" in origins


def test_bad_head_signatures(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    tamper.corrupt_head_signatures(ledger_url)
    found = rules(verify_ledger(ledger_url, signing_key.public))
    assert len(found["ledger.bad_head_signature"]) == 5
    assert "ledger.unsigned" in found  # no valid head is left


def test_forged_given_head(ledger_url: str, signing_key: SigningKey, tmp_path: Path) -> None:
    fill(ledger_url, signing_key)
    with open_ledger(ledger_url, signing_key=signing_key) as ledger:
        data = ledger.sign_head().to_dict()
    data["size"] = 39
    report = verify_ledger(ledger_url, signing_key.public, head=SignedTreeHead.from_dict(data))
    assert [f.rule for f in report.findings] == ["ledger.bad_head_signature"]


def test_wrong_key_is_an_error(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    with pytest.raises(LedgerError, match="not the given key"):
        verify_ledger(ledger_url, generate_key().public)


def test_heads_by_another_key_among_good_ones(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    intruder = generate_key()
    with open_ledger(ledger_url, signing_key=intruder) as ledger:
        ledger.sign_head()
    found = rules(verify_ledger(ledger_url, signing_key.public))
    assert list(found) == ["ledger.bad_head_signature"]


def test_missing_ledger_is_an_error(tmp_path: Path, signing_key: SigningKey) -> None:
    with pytest.raises(LedgerError):
        verify_ledger(tmp_path / "absent.db", signing_key.public)
    assert not (tmp_path / "absent.db").exists()


def test_report_json(ledger_url: str, signing_key: SigningKey) -> None:
    fill(ledger_url, signing_key)
    tamper.delete(ledger_url, 2)
    data = json.loads(json.dumps(verify_ledger(ledger_url, signing_key.public).to_dict()))
    assert data["size"] == N - 1
    assert any(f["kind"] == "ledger.entry_deleted" for f in data["findings"])


def test_ledger_keeps_working_after_tampering(ledger_url: str, signing_key: SigningKey) -> None:
    """A deleted row must not stop later appends (or the guard would go silent)."""
    fill(ledger_url, signing_key, 15, interval=10, final_head=False)
    tamper.delete(ledger_url, 3)
    with open_ledger(ledger_url, signing_key=signing_key, head_interval=10) as ledger:
        seqs = ledger.append_many([{"kind": "finding", "payload": {"i": i}} for i in range(10)])
    assert seqs == list(range(16, 26))
    assert rules(verify_ledger(ledger_url, signing_key.public))["ledger.entry_deleted"] == [3]
