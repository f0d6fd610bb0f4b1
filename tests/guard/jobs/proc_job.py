"""One rank of the process-level guard tests (signals, kills, hangs, seeds, data order,
checkpoint lineage, disabled guard). Launched by tests/guard/harness.py, directly or
under ``trainguard run``.

Findings go to ``OUT/findings-rank<R>.jsonl`` the moment they are reported (a rank may
be killed at any time); a summary goes to ``OUT/rank<R>.json`` at the end.
"""

from __future__ import annotations

# Must come before numpy and torch start their threads (see docs/guard-process.md).
import trainguard.guard.hooks as hooks

hooks.install_early()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from tests.guard.jobs import proc_sabotage as sabotage  # noqa: E402


class JsonlSink:
    """Durable per-rank sink: each finding is a flushed line at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def report(self, finding: Any) -> None:
        with self.lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(finding.to_dict(), default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def record(self, kind: str, payload: Mapping[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, dict(payload)))

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--scenario", default="none")
    parser.add_argument("--sabotage-rank", type=int, default=1)
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--settings", default="{}")
    parser.add_argument("--shuffle-seed", type=int, default=1)
    parser.add_argument("--save-at", default="")
    parser.add_argument("--resume", default="")
    parser.add_argument("--epochs", type=int, default=10_000)
    args = parser.parse_args()

    torch.set_num_threads(1)
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    run_dir = Path(os.environ.get("TRAINGUARD_RUN_DIR") or out / "run")
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            rank=rank,
            world_size=world,
        )
    # The entry point's own seeding at set-up: never a finding.
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)

    import trainguard
    from trainguard.core.errors import TrainguardError

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    wrapped: torch.nn.Module = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    settings = {
        "heartbeat.seconds": 0.3,
        "heartbeat.hang_seconds": 2.0,
        "heartbeat.stale_seconds": 2.5,
        "patch_check_seconds": 0.0,
        "sample_hz": 20.0,
    }
    settings.update(json.loads(args.settings))
    sink = JsonlSink(out / f"findings-rank{rank}.jsonl")
    guard = trainguard.watch(wrapped, opt, run_dir=run_dir, sink=sink, settings=settings)
    summary: dict[str, Any] = {"rank": rank, "pid": os.getpid(), "load_error": None}
    if args.resume:
        try:
            state = guard.load_checkpoint(args.resume)
            model.load_state_dict(state)
            summary["resumed"] = True
        except TrainguardError as exc:
            summary["load_error"] = str(exc)
    (out / f"ready-rank{rank}").write_text(str(os.getpid()))

    data = torch.utils.data.TensorDataset(torch.randn(96, 8), torch.randn(96, 2))
    sampler = torch.utils.data.distributed.DistributedSampler(
        data, num_replicas=world, rank=rank, shuffle=True, seed=args.shuffle_seed
    )
    loader = trainguard.watch_dataloader(
        torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler)
    )
    saves = {int(s) for s in args.save_at.split(",") if s}
    mine = rank == args.sabotage_rank
    step = 0
    for epoch in range(args.epochs):
        if step >= args.steps:
            break
        sampler.set_epoch(epoch)
        for x, y in loader:
            if step >= args.steps:
                break
            loss = torch.nn.functional.mse_loss(wrapped(x), y)
            opt.zero_grad()
            loss.backward()
            if args.scenario == "hang_after_peer" and mine and step == 2:
                time.sleep(1.0)  # this rank's step 3 ends a second after its peer's
            opt.step()
            guard.observe(loss=loss)
            step += 1
            if args.step_sleep:
                time.sleep(args.step_sleep)
            if step in saves:
                if rank == 0:
                    guard.save_checkpoint(model.state_dict(), run_dir / f"ckpt-{step}.pt")
                if world > 1:
                    dist.barrier()
            inject(args.scenario, step, mine, guard)
    guard.close()
    summary["steps"] = step
    (out / f"rank{rank}.json").write_text(json.dumps(summary))
    if world > 1:
        dist.destroy_process_group()
    return 0


def inject(scenario: str, step: int, mine: bool, guard: Any) -> None:
    """Apply the test's sabotage on the sabotaged rank."""
    if scenario == "reseed" and mine:
        if step == 2:
            sabotage.reseed_torch()
            sabotage.reseed_numpy()
            sabotage.reseed_python()
        elif step == 3:
            sabotage.set_torch_state(torch.get_rng_state())
            sabotage.set_numpy_state(np.random.get_state())
            sabotage.set_python_state(random.getstate())
        elif step == 5:
            sabotage.bypass_torch()
            sabotage.bypass_numpy()
            sabotage.bypass_python()
    if scenario == "reseed" and step == 4:
        torch.manual_seed(5)  # the entry point may reseed: telemetry, not a finding
    if scenario == "hang" and mine and step == 3:
        time.sleep(3600)
    if scenario == "hang_after_peer" and step == 3:
        # The peer enters the next collective at once; this rank never joins it.
        if mine:
            time.sleep(3600)
        else:
            dist.barrier()
    if scenario == "disable" and step == 3:
        rank = guard.rank
        if rank == 1:
            sabotage.disable_hooks(guard)
        elif rank == 2:
            sabotage.stop_heartbeat(guard)
        elif rank == 3:
            sabotage.replace_guard(guard)


if __name__ == "__main__":
    sys.exit(main())
