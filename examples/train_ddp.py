"""A DistributedDataParallel training script with the trainguard guard attached.

Run it directly (it starts 2 gloo processes on this machine by itself):

    python examples/train_ddp.py --run-dir runs/ddp --steps 200

or under torchrun (any backend; NCCL when CUDA is available):

    torchrun --nproc-per-node 2 examples/train_ddp.py --run-dir runs/ddp

or supervised by trainguard (records exits and signals of every rank):

    trainguard run --run-dir runs/ddp -- torchrun --nproc-per-node 2 examples/train_ddp.py

The only guard-specific lines are ``trainguard.watch(...)`` and ``guard.observe(...)``.
The guard uses the job's own process group for its cross-rank checks.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_gpt import TinyGPT, batch

import trainguard


def worker(rank: int, world: int, args: argparse.Namespace) -> None:
    """One rank: init the process group, wrap in DDP, train with the guard."""
    torch.set_num_threads(1)
    use_cuda = torch.cuda.is_available() and args.backend == "nccl"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    if not dist.is_initialized():
        dist.init_process_group(args.backend, rank=rank, world_size=world)
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
    model = TinyGPT().to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if use_cuda else None
    )
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=3e-3, weight_decay=0.01)
    sink: Any = None
    if args.memory_sink:
        from trainguard.guard.sink import MemorySink

        sink = MemorySink()
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    guard = trainguard.watch(ddp, optimizer, run_dir=args.run_dir, ledger=args.ledger, sink=sink)
    with guard:
        for step in range(args.steps):
            x, y = (t.to(device) for t in batch(gen))
            logits = ddp(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            guard.observe(loss=loss)
            if rank == 0 and step % 50 == 0:
                print(f"step {step} loss {loss.item():.3f}")
    for finding in guard.findings:
        print(f"rank {rank} [{finding.severity}] {finding.rule}: {finding.message}")
    if args.report:
        Path(args.report).mkdir(parents=True, exist_ok=True)
        out = Path(args.report) / f"rank{rank}.json"
        out.write_text(json.dumps([f.to_dict() for f in guard.findings], indent=1))
    dist.destroy_process_group()


def _spawned(rank: int, world: int, args: argparse.Namespace) -> None:
    os.environ["RANK"] = str(rank)
    os.environ["LOCAL_RANK"] = str(rank)
    worker(rank, world, args)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/ddp")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--nproc", type=int, default=2, help="processes to start when not under torchrun"
    )
    parser.add_argument("--backend", default="nccl" if torch.cuda.is_available() else "gloo")
    parser.add_argument(
        "--ledger", default=None, help="ledger URL (default: sqlite in the run dir)"
    )
    parser.add_argument(
        "--report", default=None, help="also write each rank's findings to DIR/rank<r>.json"
    )
    parser.add_argument(
        "--memory-sink", action="store_true", help="keep events in memory only (no ledger)"
    )
    args = parser.parse_args()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # under torchrun
        worker(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return 0
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ["TRAINGUARD_RUN_ID"] = os.environ.get("TRAINGUARD_RUN_ID", f"ddp-{os.getpid()}")
    torch.multiprocessing.spawn(_spawned, args=(args.nproc, args), nprocs=args.nproc, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
