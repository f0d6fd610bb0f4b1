"""The transformers.Trainer callback: a real (tiny, offline) Trainer run in its own process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integrations.harness import (
    HF_JOB,
    TIMEOUT,
    findings_cli,
    job_env,
    ledger_events,
    of_kind,
    payloads,
    require,
    run_job,
)

require("transformers", "accelerate")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_trainer_run_guarded_checkpoints_signed_and_resumes_checked(tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_job(HF_JOB, ["--out", str(out), "--steps", "40", "--save-steps", "10"], tmp_path)
    # The real optimizer behind accelerate's wrapper is hooked; every update step counted.
    assert summary["trainer_optimizer"] == "AcceleratedOptimizer"
    assert summary["optimizer"] == "AdamW"
    assert summary["guard_step"] == summary["global_step"] == 40
    assert summary["run_dir"] == str(out)  # default: the Trainer's output_dir
    assert summary["findings"] == []

    events = ledger_events(out)
    kinds = {e["kind"] for e in events}
    assert {"run.start", "timing.window", "optimizer_audit", "run.close"} <= kinds
    audits = payloads(events, "optimizer_audit")
    assert len(audits) >= 5
    assert all(a["mismatched"] == 0 for a in audits), audits
    assert payloads(events, "run.close")[0]["step"] == 40
    saves = payloads(events, "checkpoint.save")
    assert [s["step"] for s in saves] == [10, 20, 30, 40]
    for save in saves:
        assert Path(save["path"]) == (out / f"checkpoint-{save['step']}").resolve()
        assert Path(save["signature"]).is_file()
    assert findings_cli(out) == (0, [])

    # A legitimate resume from the newest checkpoint: verified, nothing reported.
    summary = run_job(
        HF_JOB,
        [
            "--out",
            str(out),
            "--steps",
            "50",
            "--save-steps",
            "10",
            "--resume",
            str(out / "checkpoint-40"),
        ],
        tmp_path,
    )
    assert summary["findings"] == []
    loads = payloads(ledger_events(out), "checkpoint.load")
    assert loads == [
        {"path": str((out / "checkpoint-40").resolve()), "step": 40, "verified": True, "rank": 0}
    ]
    assert findings_cli(out) == (0, [])

    # An older checkpoint whose weights were changed on disk: both are reported.
    weights = out / "checkpoint-20" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's data
    weights.write_bytes(bytes(data))
    summary = run_job(
        HF_JOB,
        ["--out", str(out), "--steps", "50", "--resume", str(out / "checkpoint-20")],
        tmp_path,
    )
    assert set(summary["findings"]) == {"weights.tampered", "step.rollback"}
    code, findings = findings_cli(out)
    assert code == 1
    rollback = of_kind(findings, "step.rollback")
    assert [(f["evidence"]["checkpoint_step"], f["evidence"]["newest_step"]) for f in rollback] == [
        (20, 50)
    ]
    tampered = of_kind(findings, "weights.tampered")
    assert tampered and all(f["path"] == str(out / "checkpoint-20") for f in tampered)


def test_reversed_optimizer_kernel_caught_through_the_callback(tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run_job(
        HF_JOB,
        [
            *("--out", str(out), "--steps", "30", "--sabotage-at", "10", "--audit-every", "1"),
            "--in-constructor",  # the callback without a Trainer reference works too
        ],
        tmp_path,
    )
    assert summary["guard_step"] == 30
    code, findings = findings_cli(out)
    assert code == 1
    recompute = [
        f
        for f in of_kind(findings, "grad.anomaly")
        if f["evidence"]["check"] == "optimizer_recompute"
    ]
    assert recompute, findings
    assert all(f["step"] > 10 for f in recompute)  # nothing before the sabotage
    assert recompute[0]["evidence"]["diagnosis"] == "update sign flipped"
    assert recompute[0]["evidence"]["optimizer"] == "AdamW"


@pytest.mark.distributed
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not on PATH")
def test_torchrun_recipe_under_the_supervisor(tmp_path: Path) -> None:
    """docs/integrations.md: trainguard run --run-dir DIR -- torchrun ... train.py."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "trainguard", "run", "--run-dir", str(run_dir), "--"),
            *(shutil.which("torchrun") or "torchrun", "--nproc-per-node", "2", str(HF_JOB)),
            *("--out", str(tmp_path / "out"), "--steps", "10", "--save-steps", "10"),
        ],
        cwd=tmp_path,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        _, findings = findings_cli(run_dir)
        details = "\n".join(f"{f['kind']} {f['rank']} {f['message']}" for f in findings)
        pytest.fail(f"{details}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    for name in ("summary.json", "summary1.json"):
        summary = json.loads((tmp_path / "out" / name).read_text())
        # TRAINGUARD_RUN_DIR from the supervisor wins over the Trainer's output_dir.
        assert summary["run_dir"] == str(run_dir.resolve())
        # The Trainer's DistributedDataParallel model (model_wrapped) is watched.
        assert summary["ddp"] is True and summary["world_size"] == 2
        assert summary["guard_step"] == 10
    events = ledger_events(run_dir)
    starts = payloads(events, "run.start")
    assert sorted(s["rank"] for s in starts) == [0, 1]
    assert len({s["run"] for s in starts}) == 1  # the supervisor's run id on both ranks
    assert {"supervisor.start", "supervisor.exit", "process.exit"} <= {e["kind"] for e in events}
    saves = payloads(events, "checkpoint.save")
    assert [(s["step"], s["rank"]) for s in saves] == [(10, 0)]  # signed once, by rank 0
    assert findings_cli(run_dir) == (0, [])
