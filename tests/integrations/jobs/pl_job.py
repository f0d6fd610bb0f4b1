"""A tiny PyTorch Lightning ``fit`` with the trainguard callback (tests/integrations).

Runs in its own process (the guard's audit hook and signal mask are permanent). CPU,
one device, no logger, no checkpointing, every file under ``--root``.

    python pl_job.py --root DIR --steps 40 [--sabotage-at K] [--audit-every N] [--sleep-ms MS]

``--sabotage-at K``: after optimizer step K a callback makes plain SGD's functional
implementation run with ``-lr`` (tests/integrations/jobs/sabotage.py): reversed
training while the optimizer's hyper-parameters and ``step`` look right.
``--sleep-ms MS``: ``training_step`` sleeps MS milliseconds (an injected delay).

DDP under the supervisor (docs/integrations.md, checked by hand)::

    PYTHONPATH=. trainguard run --run-dir runs/pl -- torchrun --nproc-per-node 2 \
        tests/integrations/jobs/pl_job.py --root runs/pl --steps 20 --devices 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import pytorch_lightning as pl
except ImportError:
    import lightning.pytorch as pl  # type: ignore[no-redef]

from tests.integrations.jobs.sabotage import reverse_single_tensor_sgd
from trainguard.integrations.lightning import TrainguardCallback


class Regression(pl.LightningModule):  # type: ignore[misc]
    def __init__(self, sleep_ms: float = 0.0) -> None:
        super().__init__()
        self.sleep_ms = sleep_ms
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.sleep_ms:
            time.sleep(self.sleep_ms / 1000)  # MARK:sleep
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


class SabotageAfter(pl.Callback):  # type: ignore[misc]
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            reverse_single_tensor_sgd()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sabotage-at", type=int, default=0)
    parser.add_argument("--audit-every", type=int, default=2)
    parser.add_argument("--sleep-ms", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=1, help="2 under torchrun (DDP)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=gen)
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=gen)
    # Test machines run several jobs on 2 cores: a 20 ms wobble of a 3 ms step is load,
    # not the mid-run slowdown step.slowdown is for (default floor 20 ms).
    guard_callback = TrainguardCallback(audit_every=args.audit_every, slowdown_min_ms=250.0)
    callbacks: list[Any] = [guard_callback]
    if args.sabotage_at:
        callbacks.append(SabotageAfter(args.sabotage_at))
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.root,
        callbacks=callbacks,
    )
    trainer.fit(Regression(args.sleep_ms), loader)
    guard = guard_callback.guard
    eager = guard_callback.eager
    summary = {
        "guard_step": guard.step,
        "global_step": trainer.global_step,
        "optimizer": type(guard.optimizer).__name__,
        "run_dir": str(guard.run_dir),
        "closed": eager is None and not guard.optimizer._optimizer_step_pre_hooks,
        "findings": [f.rule for f in guard.findings],
    }
    Path(
        args.root, f"summary{'' if trainer.global_rank == 0 else trainer.global_rank}.json"
    ).write_text(
        json.dumps({**summary, "ddp": guard.ddp is not None, "world_size": guard.world_size})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
