"""Fixtures: a signed model directory and key pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories.manifest_models import make_model_dir
from trainguard.core.keys import generate_key, write_keypair


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    """An Ed25519 key pair on disk: (private, public)."""
    return write_keypair(generate_key(), tmp_path / "signer.key")


@pytest.fixture
def other_keypair(tmp_path: Path) -> tuple[Path, Path]:
    """A second, unrelated Ed25519 key pair."""
    return write_keypair(generate_key(), tmp_path / "other.key")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A fresh model directory (safetensors, torch zip, npz, json)."""
    return make_model_dir(tmp_path / "model")
