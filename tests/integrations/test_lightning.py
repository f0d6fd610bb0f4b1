"""The PyTorch Lightning callback: a real CPU ``fit`` in its own process."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.integrations.harness import (
    PL_JOB,
    findings_cli,
    ledger_events,
    of_kind,
    payloads,
    require,
    run_job,
)

require("pytorch_lightning" if importlib.util.find_spec("pytorch_lightning") else "lightning")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_fit_guarded_and_closure_steps_audit_clean(tmp_path: Path) -> None:
    root = tmp_path / "root"
    summary = run_job(
        PL_JOB, ["--root", str(root), "--steps", "40", "--audit-every", "1"], tmp_path
    )
    assert summary["optimizer"] == "SGD"
    assert summary["guard_step"] == summary["global_step"] == 40
    assert summary["run_dir"] == str(root)  # default: the Trainer's default_root_dir
    assert summary["closed"] is True  # the guard's and the closure's hooks are gone
    assert summary["findings"] == []

    events = ledger_events(root)
    assert {"run.start", "timing.window", "optimizer_audit", "run.close"} <= {
        e["kind"] for e in events
    }
    # Lightning runs forward/backward inside optimizer.step(closure): without the
    # eager closure the re-computation would snapshot stale gradients and disagree.
    audits = payloads(events, "optimizer_audit")
    assert len(audits) >= 10
    assert all(a["mismatched"] == 0 for a in audits), audits
    assert findings_cli(root) == (0, [])
    assert sorted(p.name for p in root.iterdir()) == ["heartbeats", "ledger.sqlite", "summary.json"]


def test_reversed_sgd_caught_through_the_callback(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_job(
        PL_JOB,
        ["--root", str(root), "--steps", "30", "--sabotage-at", "10", "--audit-every", "1"],
        tmp_path,
    )
    code, findings = findings_cli(root)
    assert code == 1
    recompute = [
        f
        for f in of_kind(findings, "grad.anomaly")
        if f["evidence"]["check"] == "optimizer_recompute"
    ]
    assert recompute, findings
    assert all(f["step"] > 10 for f in recompute)
    assert recompute[0]["evidence"]["diagnosis"] == "update sign flipped"
    # The loss observed through on_train_batch_end climbs once the updates are reversed.
    assert all(f["step"] > 10 for f in of_kind(findings, "loss.anomaly"))


def test_sleep_in_training_step_is_a_delay_at_its_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    run_job(PL_JOB, ["--root", str(root), "--steps", "30", "--sleep-ms", "20"], tmp_path)
    _, findings = findings_cli(root)
    delays = of_kind(findings, "delay.injected")
    assert delays, findings
    line = next(
        n
        for n, text in enumerate(PL_JOB.read_text().splitlines(), start=1)
        if text.rstrip().endswith("# MARK:sleep")
    )
    assert delays[0]["location"] == f"{PL_JOB}:{line}"
