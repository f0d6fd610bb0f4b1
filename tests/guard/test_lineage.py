"""step.rollback and weights.tampered: resuming from an old or altered checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.guard.harness import findings, launch, of_kind

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(240)]


def run(tmp_path: Path, name: str, run_dir: Path, *args: str) -> Path:
    out = tmp_path / name
    job = launch(
        out,
        2,
        ["--steps", "8", *args],
        env={"TRAINGUARD_RUN_DIR": str(run_dir), "TRAINGUARD_RUN_ID": name},
    )
    assert job.wait(timeout=120) == [0, 0], job.logs()
    return out


def summary(out: Path, rank: int) -> dict[str, object]:
    import json

    return json.loads((out / f"rank{rank}.json").read_text())  # type: ignore[no-any-return]


def test_checkpoint_lineage(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = run(tmp_path, "first", run_dir, "--save-at", "4,8")
    assert findings(first) == []
    assert (run_dir / "ckpt-8.pt.tgsig.json").exists()
    assert oct((run_dir / "keys" / "checkpoint.key").stat().st_mode & 0o777) == "0o600"

    # A legitimate resume from the newest checkpoint passes.
    legit = run(tmp_path, "legit", run_dir, "--resume", str(run_dir / "ckpt-8.pt"))
    assert findings(legit) == []
    assert summary(legit, 1)["resumed"] is True

    # Resuming from the older one is a rollback, reported by every rank.
    back = run(tmp_path, "back", run_dir, "--resume", str(run_dir / "ckpt-4.pt"))
    rows = of_kind(findings(back), "step.rollback")
    assert {r["rank"] for r in rows} == {0, 1}
    assert rows[0]["evidence"]["checkpoint_step"] == 4
    assert rows[0]["evidence"]["newest_step"] == 8

    # One byte of a tensor changed on disk: weights.tampered, the load is refused.
    ckpt = run_dir / "ckpt-8.pt"
    data = bytearray(ckpt.read_bytes())
    index = data.rfind(b"PK\x05\x06") - 200  # inside the last stored record's data
    data[index] ^= 0x01
    ckpt.write_bytes(bytes(data))
    bad = run(tmp_path, "bad", run_dir, "--resume", str(ckpt))
    rows = of_kind(findings(bad), "weights.tampered")
    assert {r["rank"] for r in rows} == {0, 1}
    assert all(r["path"].startswith(str(ckpt)) for r in rows)
    assert "refusing to load" in str(summary(bad, 0)["load_error"])
