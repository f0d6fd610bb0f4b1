"""Guard overhead on a small GPT-style model, and detection latency per sabotage.

Overhead: a DDP job (default 2 gloo processes on this machine) trains a GPT-style
model (6 layers, d_model 256) and alternates segments with the guard attached
(``trainguard.watch`` at default settings) and detached, in the same processes, so
both see the same machine load. Each segment has warm-up steps (not measured) and
measured steps; the order is swapped in every pair (on/off, off/on). Reported: the
median step time of each mode and the overhead. A pure-DDP phase before the first
attach (no comm hook at all) is reported too: after a guard has attached once, DDP
keeps the guard's inert comm hook (DDP cannot unregister one), so "off" segments
include the Python all-reduce hook. One unmeasured attach precedes the pairs: it pays
the once-per-process costs (source compilation for the code-integrity check, the
env.summary collection), reported as ``first_attach_*``.

Besides wall time, each segment's process CPU time is reported (``cpu_*``: less
sensitive to other jobs on shared cores), and the guard's own work is measured
directly over the measured steps of each segment: optimizer hooks and observe
(``Guard.hook_seconds``), the fingerprint inside the DDP comm hook, and the CPU time of
the guard's background threads (their start-up and the first steps after an attach
are left out: a job attaches once).

Latency: runs the guard tests' sabotage jobs (tests/guard/jobs) and reports the steps
from injection to the first finding.

    python bench/guard/bench_overhead.py                 # overhead + latency, CPU gloo
    python bench/guard/bench_overhead.py --skip-latency --device cuda --nproc 1 --backend nccl
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


class GPT(torch.nn.Module):
    """GPT-style decoder: embeddings, pre-norm causal transformer blocks, LM head."""

    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, seq: int) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d_model)
        self.pos = torch.nn.Embedding(seq, d_model)
        block = torch.nn.TransformerEncoderLayer(
            d_model, heads, 4 * d_model, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = torch.nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab)
        mask = torch.nn.Transformer.generate_square_subsequent_mask(seq)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        h = self.blocks(h, mask=self.mask, is_causal=True)
        return self.head(self.norm(h))


def worker(rank: int, world: int, args: argparse.Namespace, out: str) -> None:
    """One rank of the overhead job."""
    import trainguard
    from trainguard.guard.sink import MemorySink, ledger_opener

    torch.set_num_threads(args.threads)
    os.environ["RANK"] = str(rank)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(args.backend, rank=rank, world_size=world)
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = GPT(args.vocab, args.d_model, args.layers, 4, args.seq).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if cuda else None
    )
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    gen = torch.Generator(device=device).manual_seed(rank)

    def step(guard: Any) -> float:
        x = torch.randint(args.vocab, (args.batch, args.seq + 1), generator=gen, device=device)
        t0 = time.perf_counter()
        logits = ddp(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if guard is not None:
            guard.observe(loss=loss)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    use_ledger = ledger_opener() is not None
    pure = [step(None) for _ in range(args.warmup + args.measure)][args.warmup :]
    # One unmeasured attach first: it pays the one-time, process-wide costs (compiling
    # the installed torch sources for the code-integrity check, ~0.6 s of CPU in a
    # background thread) that a real job pays once per process, not per segment.
    t_attach = time.perf_counter()
    first = trainguard.watch(
        ddp,
        opt,
        run_dir=Path(out) / "warm",
        sink=None if use_ledger else MemorySink(),
        settings=json.loads(args.guard_settings),
    )
    attach_s = time.perf_counter() - t_attach
    for _ in range(args.warmup):
        step(first)
    patches = first.monitor("patches")
    done = getattr(patches, "_initial_done", None)
    if done is not None:
        done.wait(timeout=120.0)
    first_verify_s = time.perf_counter() - t_attach
    first.close()
    times: dict[str, list[float]] = {"on": [], "off": []}
    pair_medians: dict[int, dict[str, float]] = {}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    findings = 0
    hook_ms: list[float] = []
    comm_ms: list[float] = []
    thread_ms: list[float] = []
    hook_cpu_ms: list[float] = []
    comm_cpu_ms: list[float] = []
    core_share: list[float] = []
    for pair in range(args.pairs):
        order = ("on", "off") if pair % 2 == 0 else ("off", "on")
        for mode in order:
            guard = None
            if mode == "on":
                sink = None if use_ledger else MemorySink()
                guard = trainguard.watch(
                    ddp,
                    opt,
                    run_dir=Path(out) / f"run{pair}",
                    sink=sink,
                    settings=json.loads(args.guard_settings),
                )
            for _ in range(args.warmup):
                step(guard)
            # The guard's own costs are counted over the measured steps only: a new
            # attach per segment pays once-per-attach work (threads starting, the first
            # exchange, bucket plans) that a long job pays once.
            before = _guard_costs(guard)
            t_segment = time.perf_counter()
            c0 = time.process_time()
            seg = [step(guard) for _ in range(args.measure)]
            # CPU time of the whole process (training thread, the guard's threads, gloo):
            # what the guard costs in work, far less sensitive than wall time to other
            # jobs competing for the same cores.
            cpu[mode].append((time.process_time() - c0) / args.measure)
            times[mode].extend(seg)
            pair_medians.setdefault(pair, {})[mode] = statistics.median(seg)
            if guard is not None:
                after = _guard_costs(guard)
                delta = {k: after[k] - before[k] for k in after}
                n = args.measure
                hook_ms.append(1000 * delta["hook"] / n)
                comm_ms.append(1000 * delta["comm"] / n)
                thread_ms.append(1000 * delta["threads"] / n)
                hook_cpu_ms.append(1000 * delta["hook_cpu"] / n)
                comm_cpu_ms.append(1000 * delta["comm_cpu"] / n)
                core_share.append(delta["threads"] / (time.perf_counter() - t_segment))
                guard.close()
                findings += sum(1 for f in guard.findings if f.severity.level >= 1)
    result = {
        "rank": rank,
        "pure_ddp": pure,
        "on": times["on"],
        "off": times["off"],
        "findings_medium_plus": findings,
        "ledger": use_ledger,
        "hook_ms_per_step": hook_ms,
        "comm_hook_ms_per_step": comm_ms,
        "hook_cpu_ms_per_step": hook_cpu_ms,
        "comm_hook_cpu_ms_per_step": comm_cpu_ms,
        "thread_core_share": core_share,
        "thread_cpu_ms_per_step": thread_ms,
        "cpu_on": cpu["on"],
        "cpu_off": cpu["off"],
        "pair_overhead_pct": [
            100.0 * (m["on"] - m["off"]) / m["off"] for _, m in sorted(pair_medians.items())
        ],
        "first_attach_s": attach_s,
        "first_attach_verified_s": first_verify_s,
    }
    Path(out, f"overhead{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _guard_costs(guard: Any) -> dict[str, float]:
    """Cumulative seconds the guard has spent so far (0 without a guard)."""
    if guard is None:
        return dict.fromkeys(("hook", "hook_cpu", "comm", "comm_cpu", "threads"), 0.0)
    grads = guard.monitor("gradients")
    return {
        "hook": guard.hook_seconds,
        "hook_cpu": getattr(guard, "hook_cpu_seconds", 0.0),
        "comm": getattr(grads, "seconds", 0.0),
        "comm_cpu": getattr(grads, "cpu_seconds", 0.0),
        "threads": _guard_thread_cpu(),
    }


def _guard_thread_cpu() -> float:
    """CPU seconds used so far by the guard's background threads (sampler, heartbeat...)."""
    import threading

    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("trainguard") and thread.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (OSError, OverflowError):
                continue
    return total


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Run the interleaved on/off job; medians from rank 0."""
    out = tempfile.mkdtemp(prefix="tg-bench-")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    os.environ["TRAINGUARD_RUN_ID"] = f"bench-{os.getpid()}"
    torch.multiprocessing.spawn(worker, args=(args.nproc, args, out), nprocs=args.nproc, join=True)
    r0 = json.loads(Path(out, "overhead0.json").read_text())
    on, off, pure = (statistics.median(r0[k]) for k in ("on", "off", "pure_ddp"))
    params = sum(
        p.numel() for p in GPT(args.vocab, args.d_model, args.layers, 4, args.seq).parameters()
    )
    return {
        "params": params,
        "steps_measured_per_mode": len(r0["on"]),
        "median_step_ms_on": round(1000 * on, 2),
        "median_step_ms_off": round(1000 * off, 2),
        "median_step_ms_pure_ddp": round(1000 * pure, 2),
        "overhead_pct": round(100 * (on - off) / off, 2),
        "overhead_vs_pure_pct": round(100 * (on - pure) / pure, 2),
        "pair_overhead_pct_median": round(statistics.median(r0["pair_overhead_pct"]), 2),
        "cpu_ms_per_step_on": round(1000 * statistics.median(r0["cpu_on"]), 2),
        "cpu_ms_per_step_off": round(1000 * statistics.median(r0["cpu_off"]), 2),
        "cpu_overhead_pct": round(
            100 * (statistics.median(r0["cpu_on"]) / statistics.median(r0["cpu_off"]) - 1), 2
        ),
        "cpu_pair_overhead_pct": [
            round(100 * (a / b - 1), 2) for a, b in zip(r0["cpu_on"], r0["cpu_off"], strict=True)
        ],
        "pair_overhead_pct_range": [
            round(min(r0["pair_overhead_pct"]), 2),
            round(max(r0["pair_overhead_pct"]), 2),
        ],
        "guard_hook_ms_per_step": round(statistics.median(r0["hook_ms_per_step"]), 3),
        "comm_hook_fingerprint_ms_per_step": round(
            statistics.median(r0["comm_hook_ms_per_step"]), 3
        ),
        "guard_threads_cpu_ms_per_step": round(statistics.median(r0["thread_cpu_ms_per_step"]), 3),
        # The guard's own CPU work, robust to other jobs on the cores: on the training
        # thread (hooks + comm hook, thread CPU time per step) and on its background
        # threads (share of one core over the segment's wall time).
        "guard_training_thread_cpu_ms_per_step": round(
            statistics.median(r0["hook_cpu_ms_per_step"])
            + statistics.median(r0["comm_hook_cpu_ms_per_step"]),
            3,
        ),
        "guard_background_core_share_pct": round(
            100 * statistics.median(r0["thread_core_share"]), 3
        ),
        # Estimated overhead on an idle machine: training-thread work over the step's CPU
        # time, plus the background share (one training thread per rank: an idle step's
        # wall time is about its CPU time).
        "guard_own_cpu_overhead_pct": round(
            100
            * (
                statistics.median(r0["hook_cpu_ms_per_step"])
                + statistics.median(r0["comm_hook_cpu_ms_per_step"])
            )
            / 1000
            / statistics.median(r0["cpu_off"])
            + 100 * statistics.median(r0["thread_core_share"]),
            2,
        ),
        "guard_hook_pct_of_step": round(
            100 * statistics.median(r0["hook_ms_per_step"]) / 1000 / off, 2
        ),
        "findings_medium_plus": r0["findings_medium_plus"],
        "ledger": r0["ledger"],
        "first_attach_ms": round(1000 * r0["first_attach_s"], 1),
        "first_attach_until_source_verified_ms": round(1000 * r0["first_attach_verified_s"], 1),
    }


# (sabotage, world, steps, extra args, env, injection step, kinds to time)
LATENCY_CASES: list[tuple[str, int, int, list[str], dict[str, str], int, tuple[str, ...]]] = [
    ("sleep_large", 2, 30, [], {"FAKE_WORLD_SIZE": "512"}, 1, ("delay.injected", "rank.straggler")),
    ("busy_large", 2, 30, [], {"FAKE_WORLD_SIZE": "512"}, 1, ("delay.injected", "rank.straggler")),
    ("block_large", 2, 30, [], {"FAKE_WORLD_SIZE": "512"}, 1, ("delay.injected", "rank.straggler")),
    ("sleep_all", 2, 20, [], {}, 1, ("delay.injected",)),
    ("param_corrupt", 3, 25, [], {}, 13, ("replica.divergence",)),
    ("patch_sgd", 2, 30, [], {}, 11, ("code.tampered", "grad.anomaly", "loss.anomaly")),
    ("patch_step_lr", 2, 20, [], {}, 0, ("code.tampered", "grad.anomaly")),
    (
        "kernel_sign",
        2,
        40,
        ["--optim", "adam", "--settings", json.dumps({"exclude_monitors": ["patches"]})],
        {},
        11,
        ("grad.anomaly", "loss.anomaly"),
    ),
    ("zero_grads", 2, 40, [], {}, 16, ("grad.anomaly",)),
]


def latency() -> list[dict[str, Any]]:
    """Steps from injection to the first finding of each kind, per sabotage."""
    from tests.guard.jobs import sabotage
    from tests.guard.jobs.runner import findings_of, run_job

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, world, steps, extra, env, injected, kinds in LATENCY_CASES:
            args = ["--memory-sink", "--sabotage", name, "--steps", str(steps), *extra]
            res = run_job(Path(tmp, name), world, args, env=env)
            row: dict[str, Any] = {"sabotage": name, "world": world, "injected_at_step": injected}
            for kind in kinds:
                steps_found = [f["step"] for f in findings_of(res, kind)]
                row[kind] = (min(steps_found) - injected) if steps_found else None
            rows.append(row)
        res = run_job(
            Path(tmp, "grad_phases"),
            3,
            [
                "--memory-sink",
                "--sabotage",
                "grad_phases",
                "--steps",
                "68",
                "--settings",
                '{"repeat_every": 5}',
            ],
        )
        outliers = findings_of(res, "grad.rank_outlier")
        for first, last, rank, how in sabotage.GRAD_PHASES:
            hits = [
                f["step"] for f in outliers if f["rank"] == rank and first < f["step"] <= last + 5
            ]
            rows.append(
                {
                    "sabotage": f"grad_{how}_rank{rank}",
                    "world": 3,
                    "injected_at_step": first + 1,
                    "grad.rank_outlier": (min(hits) - first - 1) if hits else None,
                }
            )
    return rows


def main() -> int:
    """Run the benchmark and print JSON (pasted into bench/RESULTS.md)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--backend", default="gloo")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--measure", type=int, default=12)
    p.add_argument("--guard-settings", default="{}", help="JSON overrides of the guard settings")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    args = p.parse_args()
    report: dict[str, Any] = {"torch": torch.__version__, "config": vars(args)}
    if not args.skip_overhead:
        report["overhead"] = overhead(args)
    if not args.skip_latency:
        report["latency_steps"] = latency()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
