"""Training engine: epoch loop, early stopping, DDP helpers, the run folder (``engine.run``), ``fit``
as named steps (``engine.trainer``), checkpoint evaluation (``engine.evaluate``), fitting a calibration
after training (``engine.calibrate``) and TensorBoard tracking (``engine.tracking``).

Import the submodules directly (``engine.trainer.fit``, ``engine.evaluate.evaluate_checkpoint``...);
this package file stays import-light so ``--help`` and the server do not pay for it.
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
