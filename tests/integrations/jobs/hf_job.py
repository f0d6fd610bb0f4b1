"""A tiny ``transformers.Trainer`` run with the trainguard callback (tests/integrations).

Runs in its own process: the guard installs a permanent audit hook and a signal mask,
which must not leak into the test runner. No downloads: the model is a two-layer MLP
wrapped as a ``PreTrainedModel`` and built from a local config.

    python hf_job.py --out DIR --steps 40 [--save-steps 10] [--resume CKPT]
                     [--sabotage-at K] [--audit-every N]

``--sabotage-at K``: after optimizer step K a callback makes the fused AdamW kernel
(the Trainer's default optimizer on CPU) run with ``-lr``: reversed training while
every hyper-parameter and the optimizer's Python code look right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from tests.integrations.jobs.sabotage import reverse_fused_adamw
from trainguard.integrations.huggingface import TrainguardCallback

LOADED_BOX = {"slowdown_min_ms": 250.0}
"""Test machines run several jobs on 2 cores: a 20 ms wobble of a 3 ms step is load,
not the mid-run slowdown ``step.slowdown`` is for (default floor 20 ms)."""


class TinyConfig(PretrainedConfig):  # type: ignore[misc]
    model_type = "trainguard-tiny-mlp"

    def __init__(self, width: int = 16, **kwargs: Any) -> None:
        self.width = width
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):  # type: ignore[misc]
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, config.width), torch.nn.Tanh(), torch.nn.Linear(config.width, 1)
        )
        self.post_init()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = self.net(x)
        loss = torch.nn.functional.mse_loss(out, labels) if labels is not None else None
        return {"loss": loss, "logits": out}


class Regression(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 512) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=gen)
        self.y = self.x.sum(1, keepdim=True)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class SabotageAfter(TrainerCallback):  # type: ignore[misc]
    """After optimizer step K, reverse the fused AdamW kernel (jobs/sabotage.py)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            reverse_fused_adamw()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--sabotage-at", type=int, default=0)
    parser.add_argument("--audit-every", type=int, default=2)
    parser.add_argument(
        "--in-constructor",
        action="store_true",
        help="pass the callback in Trainer(callbacks=[...]) instead of TrainguardCallback.attach",
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    model = TinyModel(TinyConfig())
    settings = {"audit_every": args.audit_every, **LOADED_BOX}
    if args.in_constructor:
        callback = TrainguardCallback(settings=settings)
        trainer = Trainer(
            model=model, args=training_args, train_dataset=Regression(), callbacks=[callback]
        )
    else:
        trainer = Trainer(model=model, args=training_args, train_dataset=Regression())
        callback = TrainguardCallback.attach(trainer, **settings)
    if args.sabotage_at:
        trainer.add_callback(SabotageAfter(args.sabotage_at))
    trainer.train(resume_from_checkpoint=args.resume)
    guard = callback.guard
    summary = {
        "guard_step": guard.step,
        "global_step": trainer.state.global_step,
        "optimizer": type(guard.optimizer).__name__,
        "trainer_optimizer": type(trainer.optimizer).__name__,
        "run_dir": str(guard.run_dir),
        "findings": [f.rule for f in guard.findings],
        "ddp": guard.ddp is not None,
        "world_size": guard.world_size,
    }
    rank = trainer.args.process_index
    Path(args.out, f"summary{rank or ''}.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
