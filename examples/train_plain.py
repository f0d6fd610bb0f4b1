"""A plain (single-process) training script with the trainguard guard attached.

    python examples/train_plain.py --run-dir runs/plain --steps 200
    trainguard findings runs/plain          # what the guard saw

The guard hooks the optimizer; the loop stays the same. ``guard.observe(loss=...)``
feeds the loss anomaly checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _tiny_gpt import TinyGPT, batch

import trainguard


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/plain", help="run directory (ledger lives here)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--ledger", default=None, help="ledger URL (default: sqlite in the run dir)"
    )
    parser.add_argument(
        "--report", default=None, help="also write this process's findings to a JSON file"
    )
    parser.add_argument(
        "--memory-sink", action="store_true", help="keep events in memory only (no ledger)"
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sink = None
    if args.memory_sink:
        from trainguard.guard.sink import MemorySink

        sink = MemorySink()
    gen = torch.Generator().manual_seed(1)
    with trainguard.watch(
        model, optimizer, run_dir=args.run_dir, ledger=args.ledger, sink=sink
    ) as guard:
        for step in range(args.steps):
            x, y = batch(gen)
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            guard.observe(loss=loss)
            if step % 50 == 0:
                print(f"step {step} loss {loss.item():.3f}")
    for finding in guard.findings:
        print(f"[{finding.severity}] {finding.rule}: {finding.message}")
    if args.report:
        Path(args.report).write_text(json.dumps([f.to_dict() for f in guard.findings], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
