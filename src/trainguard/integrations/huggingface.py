"""The training guard for the Hugging Face ``transformers.Trainer``.

    from trainguard.integrations.huggingface import TrainguardCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds)
    TrainguardCallback.attach(trainer, audit_every=20)  # or callbacks=[TrainguardCallback()]
    trainer.train()

When each thing happens, and why there:

- ``on_train_begin``: the Trainer creates its optimizer late (inside ``train()``, after
  ``accelerate.prepare``), so this is the first event at which it exists. Accelerate
  wraps it in an ``AcceleratedOptimizer``; the guard hooks the torch optimizer behind
  it (the wrapper forwards ``step`` to it only on real update steps, so gradient
  accumulation micro-batches are not counted as steps). The model given to the guard
  is the Trainer's ``model_wrapped`` (the ``DistributedDataParallel`` object under
  ``torchrun``) when the callback knows its Trainer (:meth:`TrainguardCallback.attach`
  or ``trainer=``), else the plain model of the callback event.
- ``on_log``: the logged ``loss`` (the mean since the last log, already a Python
  float: no extra device sync) feeds the loss checks.
- ``on_save``: the checkpoint directory the Trainer just wrote is signed with the
  run's key (a trainguard manifest, ``checkpoint-N/trainguard.sig.json``) and
  recorded as a ``checkpoint.save`` ledger event, the same anchor the guard's own
  ``save_checkpoint`` writes. On resume (``global_step > 0`` at ``on_train_begin``)
  ``output_dir/checkpoint-<step>`` is verified against its signature and the
  recorded history: changed bytes are ``weights.tampered``, a step older than the
  newest recorded checkpoint is ``step.rollback``. The Trainer has already loaded
  the checkpoint by then, so this reports; it cannot refuse the load.
- ``on_train_end``: the guard is closed (it also closes at interpreter exit when
  training raises).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainguard.integrations._common import (
    missing_framework,
    real_optimizer,
    resolve_run_dir,
    watch_kwargs,
)

try:
    from transformers import TrainerCallback  # type: ignore[import-not-found,unused-ignore]
    from transformers.trainer_utils import (  # type: ignore[import-not-found,unused-ignore]
        PREFIX_CHECKPOINT_DIR,
    )
except ImportError as _exc:
    raise missing_framework("huggingface", "transformers", _exc) from _exc

_logger = logging.getLogger(__name__)

__all__ = ["TrainguardCallback"]


class TrainguardCallback(TrainerCallback):  # type: ignore[misc]
    """Attaches :func:`trainguard.watch` to a ``transformers.Trainer`` run."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        trainer: Any = None,
        ledger: str | None = None,
        settings: Mapping[str, Any] | None = None,
        sign_checkpoints: bool = True,
        **overrides: Any,
    ) -> None:
        """Configure the guard; nothing attaches before ``on_train_begin``.

        Args:
            run_dir: the guard's run directory (default: ``TRAINGUARD_RUN_DIR``, else
                the Trainer's ``output_dir``).
            trainer: the Trainer, so that its ``model_wrapped`` (DDP) is watched.
            ledger: ledger URL (default ``TRAINGUARD_LEDGER``, else sqlite in run_dir).
            settings: guard settings (docs/guard.md); ``overrides`` win over them.
            sign_checkpoints: sign and record every checkpoint the Trainer saves, and
                verify the one it resumes from.
        """
        self.run_dir = run_dir
        self.trainer = trainer
        self.ledger = ledger
        self.settings = dict(settings) if settings is not None else None
        self.sign_checkpoints = sign_checkpoints
        self.overrides = dict(overrides)
        self.guard: Any = None
        """The :class:`trainguard.guard.Guard` of the current (or last) ``train()``."""

    @classmethod
    def attach(
        cls, trainer: Any, run_dir: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> Any:
        """Build a callback that knows ``trainer`` and add it to the trainer."""
        callback = cls(run_dir, trainer=trainer, **kwargs)
        trainer.add_callback(callback)
        return callback

    # ----------------------------------------------------------------- events
    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """Attach the guard to the optimizer the Trainer has just created."""
        import trainguard

        if self.guard is not None:
            self.guard.close()  # a previous train() that raised before on_train_end
        watched_model = model
        wrapped = getattr(self.trainer, "model_wrapped", None) if self.trainer is not None else None
        if wrapped is not None:
            watched_model = wrapped
        run_dir = resolve_run_dir(self.run_dir, getattr(args, "output_dir", None))
        self.guard = trainguard.watch(
            watched_model,
            real_optimizer(optimizer),
            run_dir=run_dir,
            **watch_kwargs(self.ledger, self.settings, self.overrides),
        )
        if self.sign_checkpoints and int(getattr(state, "global_step", 0) or 0) > 0:
            self._check_resumed(args, int(state.global_step))

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Feed the logged training loss to the loss checks."""
        if self.guard is None or not logs or "loss" not in logs:
            return
        self.guard.observe(loss=logs["loss"])

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Sign and record the checkpoint directory the Trainer just wrote."""
        if (
            self.guard is None
            or not self.sign_checkpoints
            or not getattr(args, "should_save", True)
        ):
            return
        path = checkpoint_dir(args, int(state.global_step))
        if not path.is_dir():
            _logger.warning("trainguard: no checkpoint directory %s to sign", path)
            return
        sign_and_record(self.guard, path, int(state.global_step))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Close the guard (hooks removed, ledger flushed)."""
        if self.guard is not None:
            self.guard.close()

    # ----------------------------------------------------------------- resume
    def _check_resumed(self, args: Any, step: int) -> None:
        path = checkpoint_dir(args, step)
        if path.is_dir():
            verify_resumed(self.guard, path, step)
        else:
            self.guard.ctx.sink.record(
                "checkpoint.load",
                {"path": str(path), "step": step, "verified": False, "reason": "not found"},
            )


def checkpoint_dir(args: Any, step: int) -> Path:
    """Where the Trainer writes (and by default resumes) the checkpoint of ``step``."""
    return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def sign_and_record(guard: Any, path: Path, step: int) -> None:
    """Sign a checkpoint directory with the run's key and record it in the ledger.

    The record has the fields of the guard's own ``checkpoint.save`` events, so the
    lineage checks (``guard.load_checkpoint``'s rollback test) see these steps too;
    ``digest`` is the digest of the signed manifest (a directory has no single file).
    """
    from trainguard.guard.checks.lineage import run_key
    from trainguard.manifest import sign_path

    ctx = guard.ctx
    key = run_key(ctx.run_dir, create=True)
    if key is None:  # pragma: no cover - create=True always yields a key
        return
    sig_path, manifest = sign_path(path, key, step=step, run=ctx.run_id, workers=1)
    ctx.sink.record(
        "checkpoint.save",
        {
            "path": str(path.resolve()),
            "step": step,
            "digest": manifest.digest(),
            "digest_of": "manifest",
            "algorithm": manifest.algorithm,
            "signature": str(sig_path),
            "key_id": key.key_id,
            "rank": ctx.rank,
            "run": ctx.run_id,
            "source": "transformers.Trainer",
        },
    )
    flush = getattr(ctx.sink, "flush", None)
    if callable(flush):  # the record must be durable before the job can be killed
        flush()


def verify_resumed(guard: Any, path: Path, step: int) -> bool:
    """Report ``weights.tampered`` / ``step.rollback`` for a resumed checkpoint directory.

    Returns True when the directory verifies and is not older than the newest
    recorded checkpoint.
    """

    from trainguard.core.errors import TrainguardError
    from trainguard.guard.checks.ledger_view import recorded
    from trainguard.guard.checks.lineage import run_key
    from trainguard.guard.findingutil import make_finding
    from trainguard.manifest import verify_path

    ctx = guard.ctx
    key = run_key(ctx.run_dir, create=False)
    problems: list[tuple[str, str, dict[str, Any]]] = []
    if key is None:
        problems.append(
            (
                "weights.tampered",
                f"{path}: resumed, but this run directory has no checkpoint key; the "
                "checkpoint cannot be verified",
                {"reason": "no run key"},
            )
        )
    else:
        try:
            result = verify_path(path, key.public, workers=1)
        except TrainguardError as exc:
            problems.append(
                ("weights.tampered", f"{path}: cannot verify: {exc}", {"reason": str(exc)})
            )
        else:
            problems.extend(
                (f.rule, f"Rank {ctx.rank} resumed from {path}: {f.message}", dict(f.evidence))
                for f in result.findings
            )
    history = recorded(ctx, "checkpoint.save") or []
    newest = max((int(e["payload"].get("step", -1)) for e in history), default=-1)
    if step < newest:
        problems.append(
            (
                "step.rollback",
                f"Rank {ctx.rank} resumes from {path} at step {step}, older than the newest "
                f"recorded checkpoint (step {newest}).",
                {"checkpoint": str(path), "checkpoint_step": step, "newest_step": newest},
            )
        )
    for kind, message, evidence in problems:
        finding = make_finding(ctx, kind, message, evidence={**evidence, "checkpoint": str(path)})
        ctx.report(finding.replace(path=str(path)))
    ctx.sink.record(
        "checkpoint.load",
        {"path": str(path.resolve()), "step": step, "verified": not problems, "rank": ctx.rank},
    )
    return not problems
