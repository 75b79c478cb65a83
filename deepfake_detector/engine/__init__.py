"""Training engine: epoch loop, evaluation, early stopping, checkpoints, DDP helpers and ``fit``.

Import the submodules directly (``engine.trainer.fit``, ``engine.loop.train_epoch``...); this package
file stays import-light so ``--help`` and the server do not pay for it.
"""

from __future__ import annotations

__all__ = [
    "fit",
    "train_epoch",
    "evaluate",
    "EarlyStoppingWithCheckpoint",
]


def __getattr__(name: str):  # lazy re-exports
    if name == "fit":
        from .trainer import fit

        return fit
    if name in ("train_epoch", "evaluate"):
        from . import loop

        return getattr(loop, name)
    if name == "EarlyStoppingWithCheckpoint":
        from .early_stopping import EarlyStoppingWithCheckpoint

        return EarlyStoppingWithCheckpoint
    raise AttributeError(name)
