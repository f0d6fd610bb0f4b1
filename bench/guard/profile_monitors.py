"""Where the guard's time goes: each monitor's CPU per step, on the overhead bench's GPT.

Two gloo ranks train the GPT of ``bench_overhead.py`` with ``trainguard.watch`` at
default settings (or ``--settings``); after warm-up steps, rank 0 times every monitor
call (``before_step``, ``after_step``, ``on_exchange``, ``on_observe``), the exchange as
a whole, the DDP comm hook and the CPU of each background thread over the measured
steps (thread CPU time, so other load on the machine inflates the numbers little).
This is the breakdown behind the "Guard" section of bench/RESULTS.md; the end-to-end
overhead is ``bench_overhead.py``'s job.

    python bench/guard/profile_monitors.py                 # 40 measured steps
    python bench/guard/profile_monitors.py --steps 80 --settings '{"sample_hz": 20}'
    python bench/guard/profile_monitors.py --cprofile 30   # + rank 0's guard functions
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import pstats
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import GPT


def _thread_cpu() -> dict[str, float]:
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            out[thread.name] = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, OverflowError):
            continue
    return out


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import trainguard
    from trainguard.guard.api import Guard
    from trainguard.guard.sink import MemorySink

    costs: dict[tuple[str, str], float] = collections.defaultdict(float)
    original_call, original_exchange = Guard._call, Guard._exchange

    def timed_call(self: Any, monitor: Any, method: str, *rest: Any) -> None:
        start = time.thread_time()
        original_call(self, monitor, method, *rest)
        costs[(monitor.name, method)] += time.thread_time() - start

    def timed_exchange(self: Any) -> None:
        start = time.thread_time()
        original_exchange(self)
        costs[("guard", "exchange (all of it)")] += time.thread_time() - start

    Guard._call = timed_call  # type: ignore[method-assign]
    Guard._exchange = timed_exchange  # type: ignore[method-assign]
    torch.manual_seed(0)
    model = GPT(args.vocab, args.d_model, args.layers, 4, args.seq)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(rank)
    guard = trainguard.watch(
        ddp, opt, run_dir=out, sink=MemorySink(), settings=json.loads(args.settings)
    )

    def step() -> None:
        x = torch.randint(args.vocab, (args.batch, args.seq + 1), generator=gen)
        logits = ddp(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.observe(loss=loss)

    for _ in range(args.warmup):
        step()
    costs.clear()
    grads = guard.monitor("gradients")
    hook0, comm0, threads0 = guard.hook_cpu_seconds, grads.cpu_seconds, _thread_cpu()
    norm0, fp0 = grads.norm_cpu_seconds, grads.fingerprints
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    profiler = cProfile.Profile() if args.cprofile and rank == 0 else None
    if profiler is not None:
        profiler.enable()
    for _ in range(args.steps):
        step()
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    threads1 = _thread_cpu()
    if rank == 0:
        n = args.steps
        print(f"step: {1e3 * wall / n:.1f} ms wall, {1e3 * cpu / n:.1f} ms CPU (training thread)")
        hooks = 1e3 * (guard.hook_cpu_seconds - hook0) / n
        comm = 1e3 * (grads.cpu_seconds - comm0) / n
        print(f"guard on the training thread: hooks {hooks:.2f} + comm hook {comm:.2f} ms/step")
        norm_steps = grads.fingerprints - fp0
        norm_ms = 1e3 * (grads.norm_cpu_seconds - norm0)
        other_ms = 1e3 * (grads.cpu_seconds - comm0) - norm_ms
        print(
            f"  comm hook: {norm_ms / max(norm_steps, 1):.2f} ms on each of {norm_steps} norm "
            f"steps, {other_ms / max(n - norm_steps, 1):.2f} ms on the other steps"
        )
        for (name, method), seconds in sorted(costs.items(), key=lambda kv: -kv[1]):
            print(f"  {name:16s} {method:22s} {1e3 * seconds / n:.3f} ms/step")
        print("background threads:")
        for name, value in sorted(threads1.items()):
            if name.startswith("trainguard") and name in threads0:
                used = value - threads0[name]
                share = 100 * used / wall
                print(f"  {name:24s} {1e3 * used / n:.3f} ms/step ({share:.2f} % of a core)")
        if profiler is not None:
            # The training thread only (cProfile does not follow other threads); its own
            # overhead inflates every figure, so read the order, not the milliseconds.
            print("training thread, trainguard functions (cProfile):")
            stats = pstats.Stats(profiler)
            stats.sort_stats(args.sort).print_stats("trainguard", args.cprofile)
    guard.close()
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--settings", default="{}", help="JSON overrides of the guard settings")
    parser.add_argument(
        "--cprofile", type=int, default=0, metavar="N", help="print rank 0's top N guard functions"
    )
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(2, port, args, out), nprocs=2, join=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
