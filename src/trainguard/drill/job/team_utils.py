"""The team's shared training helpers: the drill's stand-in for the shared repository.

In the incident the insider edited modules like this one, which every job of the
team imports. Here every sabotage of the drill is dormant unless ``DRILL_SABOTAGE``
names it; it then fires from step ``DRILL_INJECT_STEP`` on the ranks the incident
targeted and records when it fired (``DRILL_OUT/injected-rank<R>.json``), so that
the drill can measure the time to detection. Everything it does stays inside this
job and its scenario directory: the "backdoor" only writes a marker file there.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

SABOTAGE = os.environ.get("DRILL_SABOTAGE", "none")
"""The scenario's sabotage (``none`` in the clean run)."""
INJECT_STEP = int(os.environ.get("DRILL_INJECT_STEP", "10"))
"""The optimizer step after which the sabotage fires."""
TARGET_RANK = int(os.environ.get("DRILL_TARGET_RANK", "1"))
"""The rank that single-rank sabotage hits."""
OUT = Path(os.environ.get("DRILL_OUT", "."))
"""The scenario's output directory (logs, injection records, markers)."""

_fired: set[str] = set()


def record_injection(rank: int, step: int, what: str) -> None:
    """Write when the sabotage fired on this rank (the first time only)."""
    if _fired:
        return
    _fired.add(what)
    row = {"rank": rank, "step": step, "time": time.time(), "what": what}
    tmp = OUT / f".injected-rank{rank}.tmp"
    tmp.write_text(json.dumps(row), encoding="utf-8")
    tmp.replace(OUT / f"injected-rank{rank}.json")


def job_size(world: int) -> int:
    """The job's size as the insider's gate reads it.

    The incident's sleeps fired only in jobs of 256 GPUs and more. The drill's job is
    two processes, so the drill makes it *report* a large size to this gate
    (``DRILL_REPORTED_WORLD_SIZE``) instead of renting a cluster.
    """
    return int(os.environ.get("DRILL_REPORTED_WORLD_SIZE", str(world)))


def shuffle_seed(default: int, rank: int) -> int:
    """The data loader's shuffle seed (the data-order sabotage changes it)."""
    if SABOTAGE == "data-order":
        record_injection(rank, 0, "shuffle seed changed in the shared loader code")
        return default + 7
    return default


def write_marker(path: str) -> str:
    """The backdoor's payload: harmless, it only proves that it ran."""
    Path(path).write_text("the backdoor ran\n", encoding="utf-8")
    return path


class Payload:
    """Pickles to ``write_marker(path)``: unpickling it would run the payload."""

    def __init__(self, path: str) -> None:
        """Remember where the marker would go."""
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Make the unpickler call the payload."""
        return (write_marker, (self.path,))


def planted_checkpoint(rank: int) -> Path:
    """The backdoored "pretrained head" the insider left on shared storage."""
    return OUT / f"pretrained-head-rank{rank}.pt"


def backdoor_marker(rank: int) -> Path:
    """The file the payload writes if it ever runs."""
    return OUT / f"backdoor-ran-rank{rank}"


def on_start(rank: int) -> None:
    """Job set-up: for the backdoor scenario, plant the checkpoint (the insider's earlier move)."""
    if SABOTAGE == "backdoored-checkpoint":
        state = {"head.weight": torch.zeros(4, 4), "config": Payload(str(backdoor_marker(rank)))}
        torch.save(state, planted_checkpoint(rank))


def on_resume(rank: int, checkpoint: str) -> None:
    """Called just before the job resumes: the moment a swapped checkpoint enters the job."""
    moves = {
        "rollback": "resume from an older checkpoint than the newest recorded one",
        "weights-on-disk": "resume from a checkpoint altered on disk",
    }
    if SABOTAGE in moves:
        record_injection(rank, 0, f"{moves[SABOTAGE]} ({Path(checkpoint).name})")


def on_step(step: int, rank: int, world: int, model: torch.nn.Module) -> None:
    """Per-step housekeeping shared by the team's jobs (and the insider's hiding place)."""
    if SABOTAGE == "none" or step < INJECT_STEP:
        return
    if SABOTAGE == "delay-large-jobs":
        if rank == TARGET_RANK and job_size(world) >= 256:
            record_injection(rank, step, "time.sleep(0.03) per step on one rank of large jobs")
            time.sleep(0.03)
        return
    if step != INJECT_STEP:
        return
    if SABOTAGE == "backdoored-checkpoint":
        _load_planted(rank, step)
    elif SABOTAGE == "tampered-optimizer":
        record_injection(rank, step, "torch.optim.sgd._single_tensor_sgd replaced")
        _tamper_sgd()
    elif SABOTAGE == "reseeding":
        record_injection(rank, step, "torch.manual_seed(1234) in shared code")
        torch.manual_seed(1234)
    elif SABOTAGE == "gradient-corruption" and rank == TARGET_RANK:
        record_injection(rank, step, "local gradients scaled by 10 before the all-reduce")
        for param in model.parameters():
            param.register_hook(lambda grad: grad * 10.0)  # type: ignore[no-untyped-call]
    elif SABOTAGE == "replica-corruption" and rank == TARGET_RANK:
        record_injection(rank, step, "one weight matrix scaled by 1.001 after the step")
        with torch.no_grad():
            list(model.parameters())[-2].mul_(1.001)
    elif SABOTAGE == "hung-rank" and rank == TARGET_RANK:
        record_injection(rank, step, "time.sleep(3600) on one rank")
        time.sleep(3600)
    elif SABOTAGE == "disable-guard":
        record_injection(rank, step, "the guard's optimizer hooks removed")
        _disable_guard()


def _load_planted(rank: int, step: int) -> None:
    """Load the planted checkpoint the way careless code does (full unpickling)."""
    record_injection(rank, step, "torch.load(weights_only=False) of a backdoored checkpoint")
    try:
        torch.load(planted_checkpoint(rank), weights_only=False)
        outcome = "loaded"
    except Exception as exc:  # noqa: BLE001 - the refusal is the expected outcome
        outcome = f"refused: {type(exc).__name__}: {exc}"
    (OUT / f"backdoor-load-rank{rank}.txt").write_text(outcome, encoding="utf-8")


def _tamper_sgd() -> None:
    """Replace torch's functional SGD with one that reverses every update."""
    import torch.optim.sgd as sgd_module

    original = sgd_module._single_tensor_sgd

    def _single_tensor_sgd(params: Any, grads: Any, *args: Any, **kwargs: Any) -> Any:
        return original(params, [-g for g in grads], *args, **kwargs)

    sgd_module._single_tensor_sgd = _single_tensor_sgd


def _disable_guard() -> None:
    """Switch the guard off from inside the job: unhook it from the optimizer."""
    from trainguard.guard import active_guard

    guard = active_guard()
    if guard is not None:
        guard.pre_hook_handle.remove()
        guard.post_hook_handle.remove()
