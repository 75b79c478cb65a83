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

__all__ = ["EarlyStoppingWithCheckpoint", "MONITOR_MODES", "TIE_BREAK"]

MONITOR_MODES = {
    "val_loss": "min",
    "val_auc": "max",
    "val_f1": "max",
    "val_accuracy": "max",
    "val_ap": "max",
    "val_eer": "min",
}
# Breaks ties of every other monitor: a validation AUC of a few dozen videos is coarse (and often 1.0 for
# many epochs), so among equal scores the better-calibrated epoch wins.
TIE_BREAK = "val_loss"


class EarlyStoppingWithCheckpoint:
    """Watch one validation metric; save ``best.pt`` atomically on improvement; stop after ``patience``.

    ``step(value, epoch, model, make_checkpoint, tie)`` returns True when the value improved (by more than
    ``min_delta``), or matched the best (within ``min_delta``, not worse) with a lower ``tie``
    (``TIE_BREAK``'s value; not used when the monitor is that metric itself). ``should_stop`` turns True
    after ``patience`` epochs without improvement.
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
        self.best_tie: Optional[float] = None
        self.counter = 0
        self._best_state: Optional[dict] = None

    @property
    def uses_tie_break(self) -> bool:
        return self.monitor != TIE_BREAK

    def is_improvement(self, value: float, tie: Optional[float] = None) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        gain = self.best - value if self.mode == "min" else value - self.best
        if gain > self.min_delta:
            return True
        return 0 <= gain <= self.min_delta and self._better_tie(tie)

    def _better_tie(self, tie: Optional[float]) -> bool:
        if not self.uses_tie_break or tie is None or math.isnan(tie):
            return False
        return self.best_tie is None or tie < self.best_tie

    def step(
        self,
        value: float,
        epoch: int,
        model: nn.Module,
        make_checkpoint: Callable[[], Checkpoint | dict],
        tie: Optional[float] = None,
    ) -> bool:
        if self.is_improvement(value, tie):
            self.best = float(value)
            self.best_epoch = int(epoch)
            self.best_tie = None if tie is None or not self.uses_tie_break else float(tie)
            self.counter = 0
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if self.write:
                save_checkpoint(make_checkpoint(), self.path)
            note = "" if self.best_tie is None else f" ({TIE_BREAK} {self.best_tie:.5f})"
            log.info("epoch %d: %s improved to %.5f%s, saved %s", epoch, self.monitor, value, note, self.path)
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
            "best_tie": self.best_tie,
            "counter": self.counter,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")
        self.best_epoch = int(state.get("best_epoch", -1))
        self.best_tie = state.get("best_tie")
        self.counter = int(state.get("counter", 0))
        self._best_state = None  # after a resume the best weights live in best.pt
