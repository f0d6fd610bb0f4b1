"""`trainguard demo`: the backdoor is caught, real checkpoints pass, nothing executes."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainguard.cli import main

pytest.importorskip("torch")


def test_demo_behaves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep = tmp_path / "demo"
    assert main(["demo", "--keep", str(keep)]) == 0
    err = capsys.readouterr().err
    assert "never written" in err
    assert {p.name for p in keep.iterdir()} >= {"model.pt", "finetuned.pt", "features.npz"}
    # the kept backdoor really is caught by a plain scan
    assert main(["scan", str(keep / "finetuned.pt"), "--no-progress"]) == 1
