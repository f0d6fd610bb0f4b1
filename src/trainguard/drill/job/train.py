"""One rank of the drill's training job: a tiny transformer language model on a short text.

Started by ``launch.py`` (one process per rank, ``RANK`` / ``WORLD_SIZE`` /
``MASTER_ADDR`` / ``MASTER_PORT`` set) under ``trainguard run``'s supervisor. It is
an ordinary guarded training script: the guard's hooks first, ``trainguard.watch``,
``watch_dataloader``, signed checkpoints and verified resumes. The sabotage comes from
the shared helper module ``team_utils``, as it did in the incident.
"""

from __future__ import annotations

# The guard's audit hook and signal watcher go in before numpy and torch start threads.
import trainguard.guard.hooks as hooks

hooks.install_early()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import team_utils  # type: ignore[import-not-found]  # noqa: E402  (copied beside this file)
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import trainguard  # noqa: E402
from trainguard.core.errors import TrainguardError  # noqa: E402

TEXT = (
    "An insider with ordinary access to a shared training cluster can plant pickled "
    "backdoors in checkpoints, edit the optimizer, reseed the generators, reorder the "
    "data, slow down large jobs, corrupt gradients on one rank, alter weights on disk, "
    "roll training back and kill processes. A guard that watches the training from "
    "inside and outside the job, and writes what it sees to a ledger the insider cannot "
    "rewrite, turns each of these quiet moves into a finding with a name, a rank, a step "
    "and a source line. "
) * 4
"""The training text (its characters are the tokens)."""
VOCAB = sorted(set(TEXT))
"""Every token occurs in the text, so no embedding row is legitimately never trained."""
CONTEXT = 16
"""Tokens per sample."""


class TinyLM(torch.nn.Module):
    """A two-layer causal transformer over characters."""

    def __init__(self, vocab: int = len(VOCAB), dim: int = 32, layers: int = 2) -> None:
        """Build the layers."""
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, dim)
        self.pos = torch.nn.Embedding(CONTEXT, dim)
        layer = torch.nn.TransformerEncoderLayer(
            dim, nhead=2, dim_feedforward=2 * dim, dropout=0.0, batch_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(dim, vocab)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(CONTEXT)
        self.register_buffer("mask", mask, persistent=False)
        self.register_buffer("positions", torch.arange(CONTEXT), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-character logits for every position."""
        hidden = self.tok(tokens) + self.pos(self.positions)
        hidden = self.blocks(hidden, mask=self.mask, is_causal=True)
        return self.head(hidden)  # type: ignore[no-any-return]


def dataset() -> torch.utils.data.TensorDataset:
    """Overlapping windows of the text: input characters and the next characters."""
    index = {ch: i for i, ch in enumerate(VOCAB)}
    data = torch.tensor([index[ch] for ch in TEXT], dtype=torch.long)
    starts = torch.arange(0, len(data) - CONTEXT - 1, 3)
    x = torch.stack([data[s : s + CONTEXT] for s in starts.tolist()])
    y = torch.stack([data[s + 1 : s + CONTEXT + 1] for s in starts.tolist()])
    return torch.utils.data.TensorDataset(x, y)


def main() -> int:
    """Train; return the process exit code."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--min-seconds", type=float, default=0.0)
    parser.add_argument("--save-at", default="")
    parser.add_argument("--resume", default="")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--settings", default="{}")
    args = parser.parse_args()

    torch.set_num_threads(1)
    out = Path(args.out)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    run_dir = Path(os.environ.get("TRAINGUARD_RUN_DIR") or out / "run")
    device = torch.device("cpu")
    if args.device == "cuda":
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group(
            "nccl" if args.device == "cuda" else "gloo",
            init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=60),
        )
    torch.manual_seed(0)  # the entry point's own seeding, before watch(): set-up
    team_utils.on_start(rank)

    model = TinyLM().to(device)
    wrapped: torch.nn.Module = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    guard = trainguard.watch(
        wrapped, optimizer, run_dir=run_dir, settings=json.loads(args.settings)
    )
    summary: dict[str, object] = {"rank": rank, "pid": os.getpid(), "resume_error": None}
    if args.resume:
        team_utils.on_resume(rank, args.resume)
        try:
            model.load_state_dict(guard.load_checkpoint(args.resume, map_location=device))
        except TrainguardError as exc:  # refused: train from scratch, as a careful job would
            summary["resume_error"] = str(exc)
    (out / f"ready-rank{rank}").write_text(str(os.getpid()), encoding="utf-8")

    data = dataset()
    sampler: torch.utils.data.distributed.DistributedSampler[Any]
    sampler = torch.utils.data.distributed.DistributedSampler(
        data, num_replicas=world, rank=rank, shuffle=True, seed=team_utils.shuffle_seed(1, rank)
    )
    loader = trainguard.watch_dataloader(
        torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler, drop_last=True)
    )
    saves = {int(s) for s in args.save_at.split(",") if s}
    # Checkpoints are written after the loop, each with the step it was taken at, so that
    # rank 0's file writing does not make it look slower than its peers in the clean run.
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
    step = 0
    started = time.monotonic()
    epoch = 0
    while step < args.steps or (
        time.monotonic() - started < args.min_seconds and step < 50 * args.steps
    ):
        sampler.set_epoch(epoch)
        epoch += 1
        for x, y in loader:
            logits = wrapped(x.to(device))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            guard.observe(loss=loss)
            step += 1
            if step in saves and rank == 0:
                snapshots.append(
                    (step, {k: v.detach().clone() for k, v in model.state_dict().items()})
                )
            team_utils.on_step(step, rank, world, model)
            if step >= args.steps and time.monotonic() - started >= args.min_seconds:
                break
    for at, state in snapshots:
        guard.save_checkpoint(state, run_dir / f"ckpt-{at}.pt", step=at)
    if world > 1 and saves:
        dist.barrier()
    guard.close()
    summary["steps"] = step
    (out / f"rank{rank}.json").write_text(json.dumps(summary), encoding="utf-8")
    if world > 1:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    code = main()
    # Everything is flushed and closed; skip the interpreter's native teardown (gloo's
    # takes seconds on a loaded machine, and the drill runs a dozen of these jobs).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
