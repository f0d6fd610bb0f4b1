"""Ledger fixtures: a fresh ledger URL on each back end, and signing keys."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trainguard.core.keys import SigningKey, generate_key, write_keypair


def fresh_database(admin_url: str) -> str:
    """Create an empty database on the test server; return its URL."""
    import psycopg

    name = f"tg_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    """Back end under test (postgres cases are marked ``postgres``)."""
    return str(request.param)


@pytest.fixture
def ledger_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a new, empty ledger on ``backend``."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.sqlite'}"
        return
    admin = request.getfixturevalue("postgres_url")
    yield fresh_database(admin)


@pytest.fixture
def signing_key() -> SigningKey:
    """A fresh Ed25519 key."""
    return generate_key()


@pytest.fixture
def key_files(tmp_path: Path, signing_key: SigningKey) -> tuple[Path, Path]:
    """``(private, public)`` PEM files of :func:`signing_key`."""
    return write_keypair(signing_key, tmp_path / "ledger.key")
