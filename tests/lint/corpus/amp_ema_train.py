"""Mixed precision, gradient accumulation, EMA and preemption handling (corpus text)."""

import copy
import math
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

PREEMPTED = False


def on_sigterm(signum, frame):
    global PREEMPTED
    PREEMPTED = True


class ModelEMA:
    def __init__(self, model, decay=0.9999):
        self.ema = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = 0
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / 2000))
        msd = model.state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)


def init_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def all_reduce_mean(tensor):
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def train(model, loader, args):
    signal.signal(signal.SIGTERM, on_sigterm)
    model.apply(init_weights)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)
    scaler = torch.cuda.amp.GradScaler()
    ema = ModelEMA(model)
    accumulate = max(round(64 / args.batch_size), 1)
    last_opt_step = -1
    t_start = time.time()
    for i, (images, targets) in enumerate(loader):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(images), targets)
        scaler.scale(loss / accumulate).backward()
        if i - last_opt_step >= accumulate:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            ema.update(model)
            last_opt_step = i
        if PREEMPTED:
            torch.save(
                {"model": model.state_dict(), "ema": ema.ema.state_dict(), "iter": i},
                os.path.join(args.save_dir, "preempt.pt"),
            )
            sys.exit(0)
        if args.max_hours and time.time() - t_start > args.max_hours * 3600:
            break
    loss_mean = all_reduce_mean(loss.detach())
    return ema.ema, loss_mean.item()
