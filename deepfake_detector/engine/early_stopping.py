"""Early stopping that also keeps the best checkpoint on disk and restores its weights at the end."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Optional

from torch import nn

from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

__all__ = ["EarlyStoppingWithCheckpoint", "MONITOR_MODES"]

MONITOR_MODES = {
    "val_loss": "min",
    "val_auc": "max",
    "val_f1": "max",
    "val_accuracy": "max",
    "val_ap": "max",
    "val_eer": "min",
}


class EarlyStoppingWithCheckpoint:
    """Watch one validation metric; save ``best.pt`` atomically on improvement; stop after ``patience``.

    ``step(value, model, make_checkpoint)`` returns True when the value improved (by more than
    ``min_delta``). ``should_stop`` turns True after ``patience`` epochs without improvement.
    ``restore_best(model)`` puts the best weights back (from memory, or from ``best.pt`` after a resume).
    A NaN value never counts as an improvement. ``write`` False (non-zero DDP ranks) keeps the
    bookkeeping but writes nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        monitor: str = "val_loss",
        patience: int = 5,
        min_delta: float = 0.0,
        write: bool = True,
    ) -> None:
        if monitor not in MONITOR_MODES:
            raise ValueError(f"cannot monitor {monitor!r}; choose one of {', '.join(MONITOR_MODES)}")
        self.path = Path(path)
        self.monitor = monitor
        self.mode = MONITOR_MODES[monitor]
        self.patience = int(patience)
        self.min_delta = abs(float(min_delta))
        self.write = write
        self.best: Optional[float] = None
        self.best_epoch = -1
        self.counter = 0
        self._best_state: Optional[dict] = None

    def is_improvement(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(
        self, value: float, epoch: int, model: nn.Module, make_checkpoint: Callable[[], Checkpoint | dict]
    ) -> bool:
        if self.is_improvement(value):
            self.best = float(value)
            self.best_epoch = int(epoch)
            self.counter = 0
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if self.write:
                save_checkpoint(make_checkpoint(), self.path)
            log.info("epoch %d: %s improved to %.5f, saved %s", epoch, self.monitor, value, self.path)
            return True
        self.counter += 1
        log.info(
            "epoch %d: %s=%.5f, no improvement for %d/%d epochs",
            epoch,
            self.monitor,
            value,
            self.counter,
            self.patience,
        )
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.counter >= self.patience

    def restore_best(self, model: nn.Module) -> bool:
        """Load the best weights into ``model``; False when there never was a best epoch."""
        if self._best_state is not None:
            model.load_state_dict(self._best_state)
            return True
        if self.path.is_file():
            model.load_state_dict(load_checkpoint(self.path)["model"])
            return True
        return False

    def state_dict(self) -> dict:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "counter": self.counter,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_epoch = int(state.get("best_epoch", -1))
        self.counter = int(state.get("counter", 0))
        self._best_state = None  # after a resume the best weights live in best.pt
