"""Build run directories whose ledgers hold findings and telemetry, written directly
with trainguard.ledger (no torch, no guard): each test states what the run recorded."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainguard.core.findings import Finding, Severity
from trainguard.core.keys import SigningKey
from trainguard.ledger import open_ledger

RUN = "run-7f3a"
T0 = 1_780_000_000.0
INJECTED_STEP = 30
"""The step at which the fake sabotage (rank 1's gradients x 50) happens."""


def ledger_url(run_dir: Path) -> str:
    """The default ledger of a run directory."""
    return f"sqlite:///{(run_dir / 'ledger.sqlite').resolve()}"


def finding(
    rule: str,
    severity: Severity,
    message: str,
    *,
    rank: int | None = None,
    step: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A finding payload as the guard writes it."""
    return Finding(
        rule=rule,
        severity=severity,
        message=message,
        rank=rank,
        step=step,
        time=T0 + (step or 0),
        **extra,
    ).to_dict()


def build_run(
    run_dir: Path,
    *,
    steps: int = 60,
    world: int = 2,
    telemetry: bool = True,
    sabotage: bool = True,
    extra_findings: list[dict[str, Any]] | None = None,
    key: SigningKey | None = None,
    head_interval: int = 1000,
    url: str | None = None,
) -> Path:
    """A run directory with ``ledger.sqlite``; returns ``run_dir``.

    With ``telemetry`` the ledger has the new ``step``, ``replica.check`` and
    ``env.summary`` events besides the older kinds; without it, only what the guard
    wrote before those existed. With ``sabotage`` rank 1's gradient norm jumps at
    :data:`INJECTED_STEP` and a critical ``grad.rank_outlier`` names it. ``url`` puts
    the events in another ledger (a cluster's PostgreSQL) instead of the run directory.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []

    def add(kind: str, payload: dict[str, Any], rank: int | None, t: float) -> None:
        items.append(
            {"kind": kind, "payload": payload, "run": RUN, "rank": rank, "host": "node1",
             "pid": 4000 + (rank or 0), "time": t}
        )  # fmt: skip

    add(
        "supervisor.start", {"command": ["torchrun", "train.py"], "run_dir": str(run_dir)}, None, T0
    )
    for rank in range(world):
        add("run.start", {"run": RUN, "rank": rank, "world_size": world, "torch": "2.13.0",
                          "monitors": ["timing", "gradients"], "ddp": True}, rank, T0)  # fmt: skip
        add("signals.coverage", {"installed": True, "signals": ["SIGTERM"]}, rank, T0)
    if telemetry:
        add(
            "env.summary",
            {
                "python": "3.11.9",
                "platform": "Linux-6.1-x86_64",
                "torch": "2.13.0",
                "executable": "/opt/venv/bin/python",
                "packages": {"torch": "2.13.0", "numpy": "2.1.0"},
                "startup": [],
                "git": {"commit": "0123abcd", "dirty": False},
                "variables": {"PYTHONPATH": "/opt/code", "CUDA_VISIBLE_DEVICES": "0,1"},
            },
            0,
            T0,
        )
    for step in range(steps):
        t = T0 + step
        for rank in range(world):
            if telemetry:
                grad = 1.0 + 0.01 * step
                if sabotage and rank == 1 and step >= INJECTED_STEP:
                    grad *= 50.0
                add(
                    "step",
                    {
                        "step": step,
                        "seconds": None if step == 0 else 0.1 + 0.002 * rank,
                        "loss": math.exp(-step / 20) + 0.01 * rank,
                        "grad_norm": grad,
                    },
                    rank,
                    t,
                )
            if step % 10 == 9:
                add("timing.window", {"step": step, "steps": 10, "wall_ms_per_step": 100.0 + rank},
                    rank, t)  # fmt: skip
        if telemetry and step % 10 == 0:
            bad = sabotage and step >= INJECTED_STEP
            add(
                "replica.check",
                {
                    "step": step,
                    "agree": not bad,
                    "world_size": world,
                    "outliers": [1] if bad else [],
                },
                0,
                t,
            )
        if step == 20:
            add("checkpoint.save", {"path": str(run_dir / "ckpt-20.pt"), "step": 20,
                                    "digest": "aa" * 32, "rank": 0, "run": RUN}, 0, t)  # fmt: skip
        if step == 40:
            add("checkpoint.save", {"path": str(run_dir / "ckpt-40.pt"), "step": 40,
                                    "digest": "bb" * 32, "rank": 0, "run": RUN}, 0, t)  # fmt: skip
    if sabotage:
        add(
            "finding",
            finding(
                "grad.rank_outlier",
                Severity.CRITICAL,
                "Rank 1's local gradient is 50x its peers' (injected sabotage).",
                rank=1,
                step=INJECTED_STEP,
                evidence={"ratio": 50.0},
            ),
            0,
            T0 + INJECTED_STEP,
        )
        add("checkpoint.load", {"path": str(run_dir / "ckpt-20.pt"), "step": 20,
                                "digest": "aa" * 32, "rank": 0}, 0, T0 + steps)  # fmt: skip
        add(
            "finding",
            finding(
                "step.rollback",
                Severity.HIGH,
                "Rank 0 resumes from ckpt-20.pt at step 20, older than step 40.",
                rank=0,
                step=20,
                evidence={"checkpoint": str(run_dir / "ckpt-20.pt"), "newest_step": 40},
            ),
            0,
            T0 + steps,
        )
        add("process.exit", {"pid": 4001, "cmdline": "python train.py", "rank": 1,
                             "signal": "SIGKILL", "exit_code": None, "status_known": True},
            None, T0 + steps + 1)  # fmt: skip
        add(
            "finding",
            finding(
                "process.killed",
                Severity.HIGH,
                "rank 1 (pid 4001) was killed by SIGKILL",
                rank=1,
                actor={"pid": 4001, "cmdline": "python train.py", "host": "node1"},
            ),
            None,
            T0 + steps + 1,
        )
    for payload in extra_findings or []:
        add("finding", payload, 0, T0 + steps + 2)
    for rank in range(world):
        add("run.close", {"step": steps, "exchanges": steps}, rank, T0 + steps + 2)
    add("supervisor.exit", {"job_code": 0}, None, T0 + steps + 3)
    target = url or ledger_url(run_dir)
    with open_ledger(target, signing_key=key, head_interval=head_interval) as ledger:
        ledger.append_many(items)  # type: ignore[arg-type]
    return run_dir
