"""PostgreSQL specifics: the writer role can only INSERT; triggers stop even the owner."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.ledger.conftest import fresh_database
from trainguard.cli import main
from trainguard.core.errors import LedgerError
from trainguard.core.keys import SigningKey
from trainguard.ledger import open_ledger
from trainguard.ledger.store.postgres import setup
from trainguard.ledger.verify import verify_ledger

pytestmark = pytest.mark.postgres

psycopg = pytest.importorskip("psycopg")


def as_role(url: str, role: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"


@pytest.fixture
def provisioned(postgres_url: str) -> tuple[str, str]:
    """``(admin_url, writer_url)`` of a fresh database set up by :func:`setup`."""
    admin = fresh_database(postgres_url)
    role = f"tg_writer_{uuid.uuid4().hex[:8]}"
    setup(admin, role)
    return admin, as_role(admin, role)


MUTATIONS = [
    "UPDATE ledger_events SET payload = '{}'",
    "DELETE FROM ledger_events",
    "TRUNCATE ledger_events",
    "UPDATE ledger_heads SET root = 'x'",
    "DELETE FROM ledger_heads",
    "TRUNCATE ledger_heads",
    "UPDATE ledger_meta SET value = '2'",
]


def test_writer_appends_and_verifies(provisioned: tuple[str, str], signing_key: SigningKey) -> None:
    _, writer = provisioned
    with open_ledger(writer, signing_key=signing_key, head_interval=4) as ledger:
        ledger.append_many([{"kind": "step", "payload": {"i": i}} for i in range(10)])
        ledger.sign_head()
    report = verify_ledger(writer, signing_key.public)
    assert report.ok, report.findings
    assert report.heads_checked == 2  # one automatic head per batch that crosses, + sign_head


@pytest.mark.parametrize("statement", MUTATIONS)
def test_writer_cannot_change_or_remove(provisioned: tuple[str, str], statement: str) -> None:
    _, writer = provisioned
    with open_ledger(writer, signing_key=None) as ledger:
        ledger.append("finding", {"kind": "x"})
    with psycopg.connect(writer, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE ledger_events DISABLE TRIGGER USER")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DROP TABLE ledger_events")
        assert conn.execute("SELECT count(*) FROM ledger_events").fetchone()[0] == 1


@pytest.mark.parametrize("statement", MUTATIONS)
def test_triggers_refuse_even_the_owner(
    provisioned: tuple[str, str], statement: str, signing_key: SigningKey
) -> None:
    admin, writer = provisioned
    with open_ledger(writer, signing_key=signing_key, head_interval=1) as ledger:
        ledger.append("finding", {"kind": "x"})
    with psycopg.connect(admin, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM ledger_events").fetchone()[0] == 1


def test_writer_cannot_create_the_schema(postgres_url: str) -> None:
    admin = fresh_database(postgres_url)
    role = f"tg_plain_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    with pytest.raises(LedgerError, match="init-postgres"):
        open_ledger(as_role(admin, role))


def test_setup_is_idempotent_and_rejects_odd_role_names(provisioned: tuple[str, str]) -> None:
    admin, writer = provisioned
    role = writer.split("://", 1)[1].split("@", 1)[0]
    setup(admin, role, writer_password="s3cret")
    with pytest.raises(LedgerError, match="role name"):
        setup(admin, "bad; DROP TABLE x")


def test_reader_role_can_only_read(postgres_url: str) -> None:
    admin = fresh_database(postgres_url)
    suffix = uuid.uuid4().hex[:8]
    setup(admin, f"tg_w_{suffix}", reader_role=f"tg_r_{suffix}")
    with open_ledger(as_role(admin, f"tg_w_{suffix}")) as ledger:
        ledger.append("k", {})
    reader = as_role(admin, f"tg_r_{suffix}")
    with open_ledger(reader, create=False, readonly=True) as ledger:
        assert [e.kind for e in ledger.events()] == ["k"]
    with (
        psycopg.connect(reader, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("INSERT INTO ledger_events VALUES (2, 0, '', 0, '', 0, 'k', '{}', '')")


def test_init_postgres_cli(postgres_url: str, capsys, monkeypatch) -> None:
    admin = fresh_database(postgres_url)
    role = f"tg_cli_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TG_TEST_PW", "pw")
    args = ["ledger", "init-postgres", admin, "--writer-role", role, "--password-env", "TG_TEST_PW"]
    assert main(args) == 0
    with open_ledger(as_role(admin, role)) as ledger:
        assert ledger.append("k", {}) == 1
    assert (
        main(
            [
                "ledger",
                "init-postgres",
                admin,
                "--writer-role",
                role,
                "--password-env",
                "TG_UNSET_VAR_X",
            ]
        )
        == 2
    )
    assert "TG_UNSET_VAR_X" in capsys.readouterr().err


def test_cli_verify_on_postgres(
    provisioned: tuple[str, str],
    key_files: tuple[Path, Path],
    signing_key: SigningKey,
    tmp_path: Path,
    capsys,
) -> None:
    _, writer = provisioned
    key, pub = key_files
    with open_ledger(writer, signing_key=signing_key) as ledger:
        ledger.append_many([{"kind": "step", "payload": {"i": i}} for i in range(5)])
    head = tmp_path / "head.json"
    assert main(["ledger", "export", writer, "--key", str(key), "-o", str(head)]) == 0
    assert main(["ledger", "verify", writer, "--key", str(pub), "--head", str(head)]) == 0
    assert main(["ledger", "show", writer, "--format", "json"]) == 0
    assert '"seq": 5' in capsys.readouterr().out
