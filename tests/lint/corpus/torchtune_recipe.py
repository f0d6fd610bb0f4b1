"""A torchtune-style full fine-tune recipe (corpus text: linted, never run)."""

import os
import random
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler


def get_world_size_and_rank():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def set_seed(seed, debug_mode=None):
    _, rank = get_world_size_and_rank()
    local_seed = seed + rank
    torch.manual_seed(local_seed)
    np.random.seed(local_seed)
    random.seed(local_seed)
    if debug_mode is not None:
        torch.use_deterministic_algorithms(debug_mode == "error")
    return local_seed


def log_rank_zero(logger, msg):
    _, rank = get_world_size_and_rank()
    if rank != 0:
        return
    logger.info(msg)


class FullFinetuneRecipe:
    def __init__(self, cfg):
        self.cfg = cfg
        self.world_size, self.rank = get_world_size_and_rank()
        self.is_rank_zero = self.rank == 0
        self.gradient_accumulation_steps = cfg["gradient_accumulation_steps"]
        self.clip_grad_norm = cfg.get("clip_grad_norm")
        self.output_dir = Path(cfg["output_dir"])
        self.global_step = 0
        self.seed = set_seed(cfg["seed"])

    def load_checkpoint(self, path):
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return state

    def setup(self):
        self.model = nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 512))
        if self.cfg.get("resume_from"):
            state = self.load_checkpoint(self.cfg["resume_from"])
            self.model.load_state_dict(state["model"])
            self.global_step = state["step"]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg["lr"])
        self.lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=self.cfg["max_steps"]
        )
        dataset = torch.utils.data.TensorDataset(torch.randn(1024, 512), torch.randn(1024, 512))
        sampler = DistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=0
        )
        self.dataloader = DataLoader(
            dataset,
            batch_size=self.cfg["batch_size"],
            sampler=sampler,
            collate_fn=partial(torch.stack),
        )
        self.sampler = sampler

    def save_checkpoint(self, epoch):
        if not self.is_rank_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"model": self.model.state_dict(), "step": self.global_step, "epoch": epoch},
            self.output_dir / f"epoch_{epoch}.pt",
        )
        with open(self.output_dir / "config.yaml", "w") as f:
            yaml.safe_dump(dict(self.cfg), f)

    def train(self):
        self.optimizer.zero_grad()
        t0 = time.perf_counter()
        for epoch in range(self.cfg["epochs"]):
            self.sampler.set_epoch(epoch)
            for idx, (inputs, labels) in enumerate(self.dataloader):
                out = self.model(inputs)
                loss = nn.functional.mse_loss(out, labels)
                loss = loss / self.gradient_accumulation_steps
                loss.backward()
                if (idx + 1) % self.gradient_accumulation_steps == 0:
                    if self.clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(
                            self.model.parameters(), max_norm=float(self.clip_grad_norm)
                        )
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.lr_scheduler.step()
                    self.global_step += 1
                    if self.global_step % self.cfg["log_every_n_steps"] == 0 and self.is_rank_zero:
                        elapsed = time.perf_counter() - t0
                        print(f"step {self.global_step} loss {loss.item():.4f} {elapsed:.1f}s")
                        t0 = time.perf_counter()
            self.save_checkpoint(epoch)

    def cleanup(self):
        if dist.is_initialized():
            dist.destroy_process_group()


def recipe_main(config_path):
    with open(config_path) as f:
        cfg = yaml.safe_load(f)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl")
    recipe = FullFinetuneRecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.cleanup()


if __name__ == "__main__":
    recipe_main(os.environ.get("RECIPE_CONFIG", "config.yaml"))
