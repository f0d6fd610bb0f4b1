"""The training guard for PyTorch Lightning.

    from trainguard.integrations.lightning import TrainguardCallback

    trainer = pl.Trainer(max_epochs=3, callbacks=[TrainguardCallback(audit_every=20)])
    trainer.fit(model, loader)

Built on ``pytorch_lightning`` when it is installed, else on ``lightning.pytorch``.

When each thing happens, and why there:

- ``on_train_start``: the optimizers exist (``configure_optimizers`` has run) and the
  strategy has wrapped the model (``DistributedDataParallel`` under the DDP
  strategy, which the guard needs for its per-rank gradient fingerprints). The
  sanity-check validation has finished, so its seeding is not judged.
- The closure: in automatic optimization Lightning calls
  ``optimizer.step(closure=...)`` and the closure runs forward and backward *inside*
  the step, after the optimizer's pre-step hooks. The guard's pre-step checks
  (the optimizer re-computation snapshot, the dynamics snapshot) would then see the
  previous step's gradients and report a correct update as wrong. A pre-step hook
  registered before the guard's runs the closure first (under ``enable_grad``, as the
  optimizers do) and hands the optimizer a closure that returns that result once,
  then re-evaluates for optimizers that call it again (LBFGS).
- ``on_train_batch_end``: the step's ``loss`` (a tensor: no device sync) feeds the
  loss checks.
- ``on_train_end`` / ``on_exception`` / ``teardown``: the guard is closed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from trainguard.core.errors import GuardError
from trainguard.integrations._common import (
    missing_framework,
    real_optimizer,
    resolve_run_dir,
    watch_kwargs,
)
from trainguard.integrations.closure import EagerClosure

try:
    import pytorch_lightning as _pl  # type: ignore[import-not-found,unused-ignore]
except ImportError as _first:
    try:
        import lightning.pytorch as _pl  # type: ignore[no-redef,import-not-found,unused-ignore]
    except ImportError:
        raise missing_framework("lightning", "pytorch_lightning", _first) from _first

__all__ = ["TrainguardCallback"]


class TrainguardCallback(_pl.Callback):  # type: ignore[misc,name-defined]
    """Attaches :func:`trainguard.watch` to a Lightning ``fit``."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        ledger: str | None = None,
        settings: Mapping[str, Any] | None = None,
        optimizer_index: int = 0,
        **overrides: Any,
    ) -> None:
        """Configure the guard; nothing attaches before ``on_train_start``.

        Args:
            run_dir: the guard's run directory (default: ``TRAINGUARD_RUN_DIR``, else
                the Trainer's ``default_root_dir``).
            ledger: ledger URL (default ``TRAINGUARD_LEDGER``, else sqlite in run_dir).
            settings: guard settings (docs/guard.md); ``overrides`` win over them.
            optimizer_index: which of ``trainer.optimizers`` the guard hooks.
        """
        super().__init__()
        self.run_dir = run_dir
        self.ledger = ledger
        self.settings = dict(settings) if settings is not None else None
        self.optimizer_index = optimizer_index
        self.overrides = dict(overrides)
        self.guard: Any = None
        """The :class:`trainguard.guard.Guard` of the current (or last) ``fit``."""
        self.eager: EagerClosure | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Attach the guard to the model the strategy wrapped and its optimizer."""
        import trainguard

        self._close()
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if self.optimizer_index >= len(optimizers):
            raise GuardError(
                f"trainguard: the trainer has {len(optimizers)} optimizer(s), no index "
                f"{self.optimizer_index}; nothing for the guard to hook"
            )
        optimizer = real_optimizer(optimizers[self.optimizer_index])
        model = pl_module
        strategy_model = getattr(getattr(trainer, "strategy", None), "model", None)
        if isinstance(strategy_model, torch.nn.parallel.DistributedDataParallel):
            model = strategy_model
        run_dir = resolve_run_dir(self.run_dir, getattr(trainer, "default_root_dir", None))
        self.eager = EagerClosure(optimizer)
        try:
            self.guard = trainguard.watch(
                model,
                optimizer,
                run_dir=run_dir,
                **watch_kwargs(self.ledger, self.settings, self.overrides),
            )
        except BaseException:
            self.eager.remove()
            self.eager = None
            raise

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Feed the step's loss to the loss checks."""
        if self.guard is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor | float | int):
            self.guard.observe(loss=loss)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Close the guard at the end of ``fit``."""
        self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Close the guard when training fails (its ledger is flushed)."""
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Close the guard if ``fit`` ended without ``on_train_end``."""
        self._close()

    def _close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        if self.eager is not None:
            self.eager.remove()
            self.eager = None
