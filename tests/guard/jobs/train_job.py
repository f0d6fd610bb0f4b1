"""The guard tests' training job: one rank of a small gloo job (or a single process).

Run by tests/guard/jobs/runner.py with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT
set. Writes ``rank<r>.json`` with the guard's findings and some counters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.guard.jobs import sabotage


class MLP(torch.nn.Module):
    """A tiny regression model."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 64)
        self.fc2 = torch.nn.Linear(64, 64)
        self.fc3 = torch.nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _event_counts(sink: object) -> dict[str, int] | None:
    """Telemetry events per kind (MemorySink only)."""
    events = getattr(sink, "events", None)
    if events is None:
        return None
    counts: dict[str, int] = {}
    for kind, _ in events:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _save(
    guard: object, args: argparse.Namespace, model: MLP, extra: torch.Tensor, at: int
) -> float:
    """One checkpoint of rank 0 in the loop (model + ``--save-mb`` of extra state)."""
    start = time.perf_counter()
    state = {"model": model.state_dict(), "extra": extra}
    path = Path(args.out) / "ckpt" / f"step-{at}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if args.save_with == "guard":
        guard.save_checkpoint(state, path, step=at)  # type: ignore[attr-defined]
    else:
        torch.save(state, path)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sabotage", default="none")
    parser.add_argument("--optim", default="sgd", choices=["sgd", "adam", "adamw"])
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--no-ddp", action="store_true")
    parser.add_argument("--memory-sink", action="store_true")
    parser.add_argument(
        "--save-every", type=int, default=0, help="rank 0 saves a checkpoint every N steps"
    )
    parser.add_argument("--save-with", default="guard", choices=["guard", "torch"])
    parser.add_argument(
        "--save-mb", type=float, default=0.0, help="extra state in each checkpoint (MiB)"
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    sabotage.STATE.update(rank=rank, world=world)
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            rank=rank,
            world_size=world,
        )
    if args.sabotage == "patch_step_lr":
        sabotage.patch_sgd_step_lr()

    import trainguard
    from trainguard.guard.sink import MemorySink

    torch.manual_seed(0)
    teacher = MLP()
    model = MLP()
    if args.sabotage == "grad_phases":
        sabotage.install_grad_corruption(model, rank)
    if args.sabotage.startswith("grad_tie_"):
        sabotage.install_local_corruption(model, rank, args.sabotage.removeprefix("grad_tie_"), 15)
    if args.sabotage == "zero_grads":
        sabotage.install_zero_grads(model, from_step=15)
    wrapped: torch.nn.Module = model
    if world > 1 and not args.no_ddp:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    if args.optim == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    elif args.optim == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    settings = json.loads(args.settings)
    sink = MemorySink() if args.memory_sink else None
    guard = trainguard.watch(
        wrapped, opt, run_dir=Path(args.out) / "run", sink=sink, settings=settings
    )
    gen = torch.Generator().manual_seed(1000 + rank)
    delay = sabotage.DELAYS.get(args.sabotage)
    losses = []
    saves: list[float] = []
    extra = torch.randn(int(args.save_mb * 2**18), generator=torch.Generator().manual_seed(7))
    t0 = time.perf_counter()
    for step in range(args.steps):
        sabotage.STATE["step"] = step
        if delay is not None:
            delay(rank)
        if args.sabotage == "patch_sgd" and step == 10:
            sabotage.patch_sgd_functional()
        if args.sabotage == "kernel_sign" and step == 10:
            sabotage.patch_kernel_sign()
        x = torch.randn(32, 16, generator=gen)
        with torch.no_grad():
            y = teacher(x)
        out = wrapped(x)
        loss = F.mse_loss(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.observe(loss=loss)
        losses.append(float(loss))
        if args.sabotage == "param_corrupt":
            sabotage.corrupt_params(model, rank, step)
        if args.sabotage in ("param_tie", "param_all"):
            sabotage.alter_weights(model, rank, step, args.sabotage == "param_all")
        if rank == 0 and args.save_every and (step + 1) % args.save_every == 0:
            saves.append(_save(guard, args, model, extra, step + 1))
    elapsed = time.perf_counter() - t0
    timing = guard.monitor("timing")
    guard.close()
    result = {
        "rank": rank,
        "world": world,
        "findings": [f.to_dict() for f in guard.findings],
        "losses": losses,
        "elapsed": elapsed,
        "samples": getattr(getattr(timing, "sampler", None), "samples_taken", None),
        "windows": getattr(timing, "windows", None),
        "events": _event_counts(sink),
        "replica_checks": [p for k, p in sink.events if k == "replica.check"] if sink else None,
        "fingerprints": getattr(guard.monitor("gradients"), "fingerprints", None),
        "save_seconds": saves,
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result, default=str))
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
