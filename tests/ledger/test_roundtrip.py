"""Append and read back, on both back ends."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainguard.core.errors import LedgerError
from trainguard.core.findings import Finding, Severity
from trainguard.ledger import LedgerEvent, open_ledger


def test_append_and_read_back(ledger_url: str) -> None:
    with open_ledger(ledger_url) as ledger:
        first = ledger.append(
            "run.start", {"world": 4}, run="r1", rank=0, host="h", pid=7, time=1.5
        )
        seqs = ledger.append_many(
            [
                {"kind": "step", "payload": {"step": i, "loss": 0.5}, "run": "r1", "rank": 1}
                for i in range(5)
            ]
        )
        assert first == 1
        assert seqs == [2, 3, 4, 5, 6]
        assert ledger.size() == 6
        events = list(ledger.events())
    assert events[0] == LedgerEvent(1, 1.5, "r1", 0, "h", 7, "run.start", {"world": 4})
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.payload["step"] for e in events[1:]] == [0, 1, 2, 3, 4]
    assert events[1].rank == 1 and events[1].host and events[1].pid  # defaults: this process


def test_filters_and_since(ledger_url: str) -> None:
    with open_ledger(ledger_url) as ledger:
        for i in range(30):
            ledger.append("step" if i % 3 else "finding", {"i": i}, run=f"r{i % 2}")
        findings = list(ledger.events(kind="finding"))
        assert [e.payload["i"] for e in findings] == list(range(0, 30, 3))
        run1 = list(ledger.events(run="r1"))
        assert all(e.run == "r1" for e in run1) and len(run1) == 15
        assert [e.seq for e in ledger.events(since=25)] == [26, 27, 28, 29, 30]
        assert list(ledger.events(kind="finding", run="r1", since=20)) == [
            e for e in ledger.events() if e.kind == "finding" and e.run == "r1" and e.seq > 20
        ]


def test_paging_over_many_events(ledger_url: str) -> None:
    with open_ledger(ledger_url) as ledger:
        ledger.append_many({"kind": "k", "payload": {"i": i}} for i in range(2500))
        assert [e.payload["i"] for e in ledger.events()] == list(range(2500))


def test_finding_payload_round_trips(ledger_url: str) -> None:
    finding = Finding(
        rule="grad.anomaly",
        severity=Severity.HIGH,
        message="gradient norm NaN on rank 3",
        rank=3,
        step=12,
        time=10.0,
        evidence={"norm": math.nan, "limit": math.inf},
    )
    with open_ledger(ledger_url) as ledger:
        seq = ledger.append("finding", finding.to_dict(), run="r", rank=3)
        (event,) = list(ledger.events(kind="finding"))
    assert event.seq == seq
    back = Finding.from_dict(event.payload)
    assert back.rule == "grad.anomaly" and back.rank == 3 and back.step == 12
    # Non-finite floats are kept as text rather than dropping the finding.
    assert back.evidence == {"norm": "NaN", "limit": "Infinity"}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"kind": "", "payload": {}}, "kind"),
        ({"kind": "k", "payload": [1, 2]}, "mapping"),
        ({"kind": "k", "payload": {}, "rank": "0"}, "rank"),
        ({"kind": "k", "payload": {}, "time": math.nan}, "time"),
        ({"kind": "k", "payload": {}, "run": 3}, "run"),
        ({"kind": "k\ud800", "payload": {}}, "Unicode"),
    ],
)
def test_bad_fields_are_refused(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with open_ledger(tmp_path / "l.db") as ledger:
        kind = kwargs.pop("kind")
        payload = kwargs.pop("payload")
        with pytest.raises(LedgerError, match=needle):
            ledger.append(kind, payload, **kwargs)
        assert ledger.size() == 0


def test_append_many_is_all_or_nothing(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "l.db") as ledger:
        ledger.append("k", {})
        with pytest.raises(LedgerError):
            ledger.append_many([{"kind": "k", "payload": {}}, {"kind": "k"}])
        assert ledger.size() == 1
        assert ledger.append_many([]) == []


def test_reopen_continues_the_sequence(ledger_url: str) -> None:
    with open_ledger(ledger_url) as ledger:
        ledger.append_many([{"kind": "a", "payload": {}}] * 3)
    with open_ledger(ledger_url) as ledger:
        assert ledger.append("b", {}) == 4


def test_update_and_delete_are_refused_by_triggers(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "l.db"
    with open_ledger(path) as ledger:
        ledger.append("k", {"v": 1})
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE ledger_events SET payload = '{}'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM ledger_events")
    conn.close()


@pytest.mark.parametrize(
    "url",
    ["mysql://x@y/z", "sqlite://host/abs.db", "sqlite:relative.db", ""],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(LedgerError):
        open_ledger(url)


def test_missing_directory_and_readers_do_not_create(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        open_ledger(tmp_path / "nope" / "l.db")
    with pytest.raises(LedgerError, match="no such ledger"):
        open_ledger(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError):
        open_ledger(path)


def test_closed_ledger_refuses(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "l.db")
    ledger.close()
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.append("k", {})


def test_signing_key_from_environment(tmp_path: Path, monkeypatch, key_files) -> None:
    from trainguard.core.keys import load_public_key
    from trainguard.ledger.verify import verify_ledger

    key, pub = key_files
    monkeypatch.setenv("TRAINGUARD_LEDGER_KEY", str(key))
    with open_ledger(tmp_path / "l.db", head_interval=3) as ledger:  # no key passed
        ledger.append_many([{"kind": "k", "payload": {"i": i}} for i in range(6)])
        assert [h.size for h in ledger.heads()] == [6]
    assert verify_ledger(tmp_path / "l.db", load_public_key(pub)).ok
    monkeypatch.setenv("TRAINGUARD_LEDGER_KEY", str(tmp_path / "missing.key"))
    with pytest.raises(LedgerError, match="TRAINGUARD_LEDGER_KEY"):
        open_ledger(tmp_path / "l.db")
    open_ledger(tmp_path / "l.db", readonly=True, create=False).close()  # readers need no key


def test_odd_payload_values_are_kept_as_text(ledger_url: str) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque-object"

    payload = {"surrogate": "a\ud800b", 3: {1, 2}, "obj": Opaque(), "t": (1, 2)}
    with open_ledger(ledger_url) as ledger:
        ledger.append("k", payload)
        (event,) = list(ledger.events())
    assert event.payload == {
        "surrogate": "a\\ud800b",
        "3": [1, 2],
        "obj": "opaque-object",
        "t": [1, 2],
    }
