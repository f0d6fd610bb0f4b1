"""Thin adapters that attach the training guard to training frameworks.

- :mod:`trainguard.integrations.huggingface` — a ``transformers.TrainerCallback``;
- :mod:`trainguard.integrations.lightning` — a PyTorch Lightning ``Callback``.

Each adapter only decides *when* to call :func:`trainguard.watch`, ``observe`` and
``close``: every check lives in :mod:`trainguard.guard`. The frameworks are imported
by the adapter modules themselves, never here, so ``import trainguard`` (and
``import trainguard.integrations``) works without them; importing an adapter whose
framework is missing raises an ``ImportError`` naming the ``integrations`` extra.
See docs/integrations.md.
"""

from __future__ import annotations

__all__: list[str] = []
