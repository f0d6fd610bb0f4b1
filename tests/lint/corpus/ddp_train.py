"""A typical torchrun DDP training script (corpus text: linted, never run)."""

import argparse
import json
import logging
import os
import random
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler

logger = logging.getLogger(__name__)


class RandomTokens(Dataset):
    def __init__(self, n, seq_len, vocab):
        g = torch.Generator().manual_seed(1234)
        self.data = torch.randint(0, vocab, (n, seq_len), generator=g)

    def __len__(self):
        return len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


def seed_worker(worker_id):
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def wait_for_file(path, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if Path(path).exists():
            return True
        time.sleep(1.0)
    return False


def save_checkpoint(model, optimizer, step, output_dir, keep=3):
    ckpt_dir = Path(output_dir) / f"step_{step}"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "rng_state": torch.get_rng_state(),
    }
    torch.save(state, ckpt_dir / "state.pt")
    old = sorted(Path(output_dir).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    for stale in old[:-keep]:
        shutil.rmtree(stale)


def load_checkpoint(path, model, optimizer):
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_state"])
    return int(state["step"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()

    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    dist.init_process_group("nccl")
    rank = dist.get_rank()
    torch.cuda.set_device(local_rank)
    set_seed(args.seed + rank)
    if rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        logger.info("host %s, world size %d", socket.gethostname(), world_size)
    dist.barrier()

    dataset = RandomTokens(4096, 128, 32000)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, seed=args.seed)
    loader = DataLoader(
        dataset, batch_size=8, sampler=sampler, num_workers=4, worker_init_fn=seed_worker
    )
    model = nn.Sequential(nn.Embedding(32000, 256), nn.Linear(256, 32000)).cuda(local_rank)
    model = DDP(model, device_ids=[local_rank])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    step = 0
    if args.resume:
        step = load_checkpoint(args.resume, model, optimizer)

    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        for batch in loader:
            batch = batch.cuda(local_rank, non_blocking=True)
            logits = model(batch[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            if rank == 0 and step % 100 == 0:
                elapsed = time.perf_counter() - start
                logger.info("epoch %d step %d loss %.4f (%.1fs)", epoch, step, loss.item(), elapsed)
            if step % 1000 == 0 and rank == 0:
                save_checkpoint(model, optimizer, step, args.output_dir)
        if rank == 0:
            with open(os.path.join(args.output_dir, "metrics.json"), "a") as f:
                json.dump({"epoch": epoch, "step": step, "loss": loss.item()}, f)
                f.write("\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
