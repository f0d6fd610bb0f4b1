"""PostgreSQL back end: one ledger for a whole cluster.

Append-only enforcement is layered, because the table owner or a superuser can
always undo it (research: runtime.md section 5):

1. The writer role gets SELECT and INSERT only; UPDATE, DELETE and TRUNCATE are
   revoked (:func:`setup` creates the role and grants).
2. A ``BEFORE UPDATE OR DELETE ... FOR EACH ROW`` trigger raises, and so does a
   statement-level ``BEFORE TRUNCATE`` trigger (TRUNCATE ignores row triggers).
3. Signed tree heads, exported somewhere the DBA cannot write, catch what an owner
   does anyway.

Total order: a writer takes a transaction-scoped advisory lock, reads ``max(seq)``
and inserts its batch with COPY. The lock is released at COMMIT, after the rows
are visible, so the next writer continues from there: one gap-free order across
every rank and job, and the same verifier as SQLite.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final

from trainguard.core.errors import LedgerError
from trainguard.ledger.events import PreparedEvent
from trainguard.ledger.merkle import Frontier
from trainguard.ledger.store.common import (
    PAGE,
    build_rows,
    crossed,
    head_at,
    paged_rows,
    periodic_head,
    redact,
    rows_query,
    to_row,
)
from trainguard.ledger.store.interface import SCHEMA_VERSION, HeadSigner, Row
from trainguard.ledger.tree_head import SignedTreeHead

_logger = logging.getLogger(__name__)

LOCK_KEY: Final = 0x7467_6C65_6467_6572
"""Advisory lock id ("tgledger" in ASCII) serialising appends within one database."""
SCAN_BATCH: Final = 20_000
CONNECT_TIMEOUT_S: Final = 10

SCHEMA_SQL: Final = (
    "CREATE TABLE IF NOT EXISTS ledger_meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE IF NOT EXISTS ledger_events (
        seq bigint PRIMARY KEY,
        time double precision NOT NULL,
        run text NOT NULL,
        rank integer,
        host text,
        pid integer,
        kind text NOT NULL,
        payload text NOT NULL,
        leaf bytea NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_events_kind ON ledger_events (kind, seq)",
    """CREATE TABLE IF NOT EXISTS ledger_heads (
        id bigserial PRIMARY KEY,
        size bigint NOT NULL,
        root bytea NOT NULL,
        time double precision NOT NULL,
        key_id text NOT NULL,
        signature text NOT NULL,
        frontier bytea NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_heads_size ON ledger_heads (size)",
    """CREATE OR REPLACE FUNCTION ledger_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'trainguard ledger is append-only: % on % refused', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END
        $$""",
    *(
        stmt
        for table in ("ledger_events", "ledger_heads", "ledger_meta")
        for stmt in (
            f"CREATE OR REPLACE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_append_only()",
            f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only()",
        )
    ),
    "INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '1') "
    "ON CONFLICT (key) DO NOTHING",
)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise LedgerError(
            "PostgreSQL ledgers need psycopg 3; install with: pip install 'trainguard[postgres]'"
        ) from exc
    return psycopg


def _connect(url: str) -> Any:
    psycopg = _psycopg()
    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LedgerError(f"{redact(url)}: cannot connect to PostgreSQL: {detail}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def create_schema(conn: Any) -> None:
    """Create tables, indexes and append-only triggers (idempotent; needs CREATE rights)."""
    with conn.transaction():
        # Concurrent first opens would race on CREATE OR REPLACE; serialise them.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        for statement in SCHEMA_SQL:
            conn.execute(statement)


def setup(
    admin_url: str,
    writer_role: str,
    *,
    writer_password: str | None = None,
    reader_role: str | None = None,
) -> None:
    """Create the schema and an INSERT-only writer role, as a database administrator.

    The tables stay owned by the admin; the writer may SELECT and INSERT, and
    UPDATE/DELETE/TRUNCATE are revoked explicitly (and refused by triggers besides).

    Raises:
        LedgerError: cannot connect, or the admin lacks rights (message names the step).
    """
    psycopg = _psycopg()
    from psycopg import sql

    roles = [r for r in (writer_role, reader_role) if r]
    for role in roles:
        if not role.replace("_", "").isalnum():
            raise LedgerError(f"role name {role!r}: use letters, digits and underscores only")
    conn = _connect(admin_url)
    try:
        create_schema(conn)
        with conn.transaction():
            passwords: list[tuple[str, str | None]] = [(writer_role, writer_password)]
            if reader_role:
                passwords.append((reader_role, None))
            for role, password in passwords:
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)
                ).fetchone()
                ident = sql.Identifier(role)
                if exists is None:
                    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
                if password is not None:
                    conn.execute(
                        sql.SQL("ALTER ROLE {} PASSWORD {}").format(ident, sql.Literal(password))
                    )
            tables = sql.SQL("ledger_events, ledger_heads, ledger_meta")
            conn.execute(sql.SQL("REVOKE ALL ON {} FROM PUBLIC").format(tables))
            for role in roles:
                ident = sql.Identifier(role)
                conn.execute(sql.SQL("REVOKE ALL ON {} FROM {}").format(tables, ident))
                conn.execute(
                    sql.SQL("GRANT SELECT ON {} TO {}").format(tables, ident),
                )
            writer = sql.Identifier(writer_role)
            conn.execute(
                sql.SQL("GRANT INSERT ON ledger_events, ledger_heads TO {}").format(writer)
            )
            conn.execute(
                sql.SQL("GRANT USAGE ON SEQUENCE ledger_heads_id_seq TO {}").format(writer)
            )
            conn.execute(
                sql.SQL(
                    "REVOKE UPDATE, DELETE, TRUNCATE ON ledger_events, ledger_heads, ledger_meta "
                    "FROM {}"
                ).format(writer)
            )
    except psycopg.Error as exc:
        raise LedgerError(f"{redact(admin_url)}: ledger setup failed: {_one_line(exc)}") from exc
    finally:
        conn.close()


class PostgresStore:
    """A ledger in PostgreSQL tables (thread-safe; reconnects after ``fork``)."""

    def __init__(self, url: str, *, create: bool = True, readonly: bool = False) -> None:
        """Connect; with ``create``, make the schema when missing and the role may.

        Raises:
            LedgerError: unreachable server, missing schema, or no rights to create it.
        """
        self._url = url
        self.url = redact(url)
        self.readonly = readonly
        self._psycopg = _psycopg()
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._conn = _connect(url)
        try:
            present = self._conn.execute("SELECT to_regclass('ledger_events')").fetchone()[0]
            self._conn.commit()
            if present is None:
                if not create or readonly:
                    raise LedgerError(
                        f"{self.url}: no ledger tables in this database; "
                        "run 'trainguard ledger init-postgres ADMIN_URL --writer-role ROLE'"
                    )
                try:
                    create_schema(self._conn)
                except self._psycopg.Error as exc:
                    raise LedgerError(
                        f"{self.url}: cannot create the ledger tables ({_one_line(exc)}); run "
                        "'trainguard ledger init-postgres ADMIN_URL --writer-role ROLE' as an admin"
                    ) from exc
            row = self._conn.execute(
                "SELECT value FROM ledger_meta WHERE key = 'schema_version'"
            ).fetchone()
            self._conn.commit()
        except self._psycopg.Error as exc:
            self._conn.close()
            raise LedgerError(f"{self.url}: cannot read the ledger: {_one_line(exc)}") from exc
        except LedgerError:
            self._conn.close()
            raise
        if row is None or row[0] != str(SCHEMA_VERSION):
            self._conn.close()
            raise LedgerError(
                f"{self.url}: ledger schema version {row[0] if row else None!r} is not "
                f"{SCHEMA_VERSION}; upgrade trainguard"
            )

    @property
    def conn(self) -> Any:
        """This process's connection (a forked child opens its own)."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._conn = _connect(self._url)
        elif self._conn.closed or self._conn.broken:
            self._conn = _connect(self._url)
        return self._conn

    def _error(self, action: str, exc: BaseException) -> LedgerError:
        return LedgerError(f"{self.url}: cannot {action}: {_one_line(exc)}")

    def _rollback(self) -> None:
        try:
            self._conn.rollback()
        except self._psycopg.Error:
            _logger.debug("rollback failed", exc_info=True)

    # -- writes ---------------------------------------------------------------------------

    def _checkpoint(self, conn: Any, size: int) -> tuple[int, bytes] | None:
        row = conn.execute(
            "SELECT size, frontier FROM ledger_heads WHERE size <= %s "
            "ORDER BY size DESC, id DESC LIMIT 1",
            (size,),
        ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    @staticmethod
    def _leaves_between(conn: Any, after: int, upto: int) -> list[bytes]:
        cur = conn.execute(
            "SELECT leaf FROM ledger_events WHERE seq > %s AND seq <= %s ORDER BY seq",
            (after, upto),
        )
        return [bytes(r[0]) for r in cur]

    @staticmethod
    def _insert_head(conn: Any, head: SignedTreeHead, frontier: Frontier) -> None:
        conn.execute(
            "INSERT INTO ledger_heads (size, root, time, key_id, signature, frontier) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                head.size,
                head.root,
                head.time,
                head.key_id,
                head.signature_b64,
                frontier.to_bytes(),
            ),
        )

    def _locked_size(self, conn: Any) -> int:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_events").fetchone()[0])

    def append(
        self, events: Sequence[PreparedEvent], signer: HeadSigner | None, head_interval: int
    ) -> list[int]:
        """Insert ``events`` under the advisory lock with COPY (see the Protocol)."""
        if not events:
            return []
        if self.readonly:
            raise LedgerError(f"{self.url}: ledger was opened read-only")
        with self._lock:
            conn = self.conn
            try:
                with conn.transaction():
                    last = self._locked_size(conn)
                    rows = build_rows(last + 1, events)
                    with (
                        conn.cursor() as cur,
                        cur.copy(
                            "COPY ledger_events (seq, time, run, rank, host, pid, kind, payload, "
                            "leaf) FROM STDIN"
                        ) as copy,
                    ):
                        for row in rows:
                            copy.write_row(row)
                    size = last + len(rows)
                    if signer is not None and crossed(last, size, head_interval):
                        signed = periodic_head(
                            size,
                            self._checkpoint(conn, size),
                            lambda after: self._leaves_between(conn, after, size),
                            signer,
                        )
                        if signed is not None:
                            self._insert_head(conn, *signed)
            except self._psycopg.Error as exc:
                self._rollback()
                raise self._error("append to the ledger", exc) from exc
        return list(range(last + 1, size + 1))

    def sign_head(self, signer: HeadSigner) -> SignedTreeHead:
        """Sign the current size under the advisory lock and store the head."""
        if self.readonly:
            raise LedgerError(f"{self.url}: ledger was opened read-only")
        with self._lock:
            conn = self.conn
            try:
                with conn.transaction():
                    size = self._locked_size(conn)
                    head, frontier = head_at(
                        size,
                        self._checkpoint(conn, size),
                        lambda after: self._leaves_between(conn, after, size),
                        signer,
                    )
                    self._insert_head(conn, head, frontier)
            except self._psycopg.Error as exc:
                self._rollback()
                raise self._error("sign a tree head", exc) from exc
        return head

    # -- reads -----------------------------------------------------------------------------

    def size(self) -> int:
        """Highest sequence number (0 when empty)."""
        with self._lock:
            conn = self.conn
            try:
                with conn.transaction():
                    row = conn.execute("SELECT coalesce(max(seq), 0) FROM ledger_events").fetchone()
            except self._psycopg.Error as exc:
                self._rollback()
                raise self._error("read the ledger size", exc) from exc
        return int(row[0])

    def rows(
        self,
        *,
        kind: str | None = None,
        run: str | None = None,
        since: int = 0,
        until: int | None = None,
    ) -> Iterator[Row]:
        """Rows in pages of :data:`PAGE` (one short transaction per page)."""
        query, params = rows_query("%s", kind=kind, run=run, until=until)

        def fetch(last: int) -> list[Any]:
            with self._lock:
                conn = self.conn
                try:
                    with conn.transaction():
                        page: list[Any] = conn.execute(query, (last, *params, PAGE)).fetchall()
                        return page
                except self._psycopg.Error as exc:
                    self._rollback()
                    raise self._error("read the ledger", exc) from exc

        return paged_rows(fetch, since)

    def scan(self) -> Iterator[Sequence[Row]]:
        """All rows from one REPEATABLE READ snapshot via a server-side cursor."""
        conn = _connect(self._url)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            with conn.cursor(name="trainguard_ledger_scan") as cur:
                cur.itersize = SCAN_BATCH
                cur.execute(
                    "SELECT seq, time, run, rank, host, pid, kind, payload, leaf "
                    "FROM ledger_events ORDER BY seq"
                )
                while True:
                    batch = cur.fetchmany(SCAN_BATCH)
                    if not batch:
                        break
                    yield [to_row(r) for r in batch]
            conn.commit()
        except self._psycopg.Error as exc:
            raise self._error("read the ledger", exc) from exc
        finally:
            conn.close()

    def leaves(self, first: int, last: int) -> list[bytes]:
        """Stored leaf hashes of entries ``first..last``."""
        with self._lock:
            conn = self.conn
            try:
                with conn.transaction():
                    return self._leaves_between(conn, first - 1, last)
            except self._psycopg.Error as exc:
                self._rollback()
                raise self._error("read leaf hashes", exc) from exc

    def heads(self) -> list[SignedTreeHead]:
        """Stored signed heads, oldest first."""
        with self._lock:
            conn = self.conn
            try:
                with conn.transaction():
                    rows = conn.execute(
                        "SELECT size, root, time, key_id, signature FROM ledger_heads ORDER BY id"
                    ).fetchall()
            except self._psycopg.Error as exc:
                self._rollback()
                raise self._error("read signed heads", exc) from exc
        return [
            SignedTreeHead(int(s), bytes(r).hex(), float(t), str(k), str(sig))
            for s, r, t, k, sig in rows
        ]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            try:
                self._conn.close()
            except self._psycopg.Error:
                _logger.debug("close failed", exc_info=True)
