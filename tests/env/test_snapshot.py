"""Snapshots: digests, signatures, diffs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories.env_sitepackages import fake_interpreter, make_dist
from trainguard.core.errors import EnvError, SignatureError
from trainguard.core.keys import generate_key
from trainguard.env.snapshot import (
    diff_snapshots,
    load_snapshot,
    sign_snapshot,
    snapshot_environment,
)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    make_dist(
        site,
        "alpha",
        "1.0",
        {"alpha/__init__.py": b"A = 1\n", "alpha/lib/libcudart.so.12": b"\x7fELF"},
    )
    make_dist(site, "beta", "2.0", {"beta.py": b"B = 2\n"})
    return site


def test_versions_only_snapshot(site: Path) -> None:
    snap = snapshot_environment(fake_interpreter(site))
    assert {k: v["version"] for k, v in snap["distributions"].items()} == {
        "alpha": "1.0",
        "beta": "2.0",
    }
    assert "files" not in snap["distributions"]["alpha"]


def test_digest_snapshot_signed_roundtrip(site: Path, tmp_path: Path) -> None:
    key = generate_key()
    snap = sign_snapshot(snapshot_environment(fake_interpreter(site), digests=True, jobs=1), key)
    assert snap["native_libraries"][0]["path"] == "alpha/lib/libcudart.so.12"
    assert snap["findings"] == []
    path = tmp_path / "lock.json"
    path.write_text(json.dumps(snap))
    loaded = load_snapshot(path, key.public)
    assert diff_snapshots(
        loaded, snapshot_environment(fake_interpreter(site), digests=True, jobs=1)
    ).empty
    # Tampering with the snapshot breaks the signature.
    snap["distributions"]["alpha"]["version"] = "9.9"
    path.write_text(json.dumps(snap))
    with pytest.raises(SignatureError, match="altered"):
        load_snapshot(path, key.public)
    with pytest.raises(SignatureError, match="not by"):
        load_snapshot(path, generate_key().public)


def test_diff_names_changed_file_and_versions(site: Path) -> None:
    old = snapshot_environment(fake_interpreter(site), digests=True, jobs=1)
    (site / "alpha" / "__init__.py").write_text("A = 2\n")
    make_dist(site, "gamma", "0.1", {"gamma.py": b"G = 1\n"})
    new = snapshot_environment(fake_interpreter(site), digests=True, jobs=1)
    diff = diff_snapshots(old, new)
    assert diff.added == (("gamma", "0.1"),)
    assert [c[1] for c in diff.changed_files] == ["alpha/__init__.py"]
    kinds = {f.evidence["change"] for f in diff.findings()}
    assert kinds == {"added", "content"}


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(EnvError, match="cannot read"):
        load_snapshot(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(EnvError, match="not JSON"):
        load_snapshot(bad)
    bad.write_text('{"format": "other"}')
    with pytest.raises(EnvError, match="not a trainguard-env-snapshot-v1"):
        load_snapshot(bad)
    unsigned = tmp_path / "u.json"
    unsigned.write_text(json.dumps({"format": "trainguard-env-snapshot-v1", "distributions": {}}))
    with pytest.raises(SignatureError, match="not signed"):
        load_snapshot(unsigned, generate_key().public)
