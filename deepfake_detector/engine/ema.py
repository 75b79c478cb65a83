"""A moving average of the weights: the model that is validated, saved and deployed.

Fine-tuned on a few hundred videos, the weights of successive steps are noisy and the validation loss
that picks the best epoch is noisier still; their exponential moving average generalises better and
gives a steadier validation curve (docs/quality.md measures it). As in torchvision's references and
timm's ``ModelEma``: buffers (BatchNorm statistics) are averaged too, and the decay warms up as
``min(decay, (1 + n) / (10 + n))`` so the first, random-ish weights do not linger in a short run.

The horizon is set in epochs (``TrainConfig.ema_epochs``), not as a per-step decay, so one setting means
the same on a demo of 15 steps per epoch and on DFDC's thousands: ``decay = 1 - 1 / (epochs * steps)``.
Only what training changes is tracked: parameters that require gradients and buffers (a frozen
backbone's weights are not copied each step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["WeightAverage", "decay_for"]


def decay_for(ema_epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay whose averaging horizon (1 / (1 - decay) steps) is ``ema_epochs`` epochs."""
    steps = max(1.0, float(ema_epochs) * max(1, int(steps_per_epoch)))
    return 1.0 - 1.0 / steps


class WeightAverage:
    """Exponential moving average of ``model``'s trainable parameters and buffers.

    ``update(model)`` after each optimiser step; ``with avg.applied(model):`` puts the average in the
    model (validation, checkpoints) and the training weights back afterwards; ``training_state()``
    (inside ``applied``) and ``load(model, state)`` carry both across a ``--resume``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        sd = model.state_dict(keep_vars=True)
        names = [k for k, v in sd.items() if not isinstance(v, nn.Parameter) or v.requires_grad]
        self.average = {k: sd[k].detach().clone() for k in names}
        self._held: dict[str, torch.Tensor] | None = None  # the training weights while applied

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        sd = model.state_dict()
        for name, avg in self.average.items():
            if avg.is_floating_point():
                avg.lerp_(sd[name].to(avg.dtype), 1.0 - d)
            else:  # counters such as num_batches_tracked
                avg.copy_(sd[name])

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        sd = model.state_dict()
        self._held = {k: sd[k].detach().clone() for k in self.average}
        with torch.no_grad():
            for name, avg in self.average.items():
                sd[name].copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in self._held.items():
                    sd[name].copy_(value)
            self._held = None

    def training_state(self) -> dict:
        """What a resume needs beside the checkpoint's model (the average): the training weights."""
        if self._held is None:
            raise RuntimeError("training_state() is only defined while the average is applied")
        return {"updates": self.updates, "training": {k: v.detach().cpu() for k, v in self._held.items()}}

    @torch.no_grad()
    def load(self, model: nn.Module, state: dict) -> None:
        """``model`` holds a checkpoint's (averaged) weights: they become the average, and the training
        weights of ``state`` go back into the model."""
        sd = model.state_dict()
        missing = set(self.average) - set(state.get("training") or {})
        if missing:
            raise ValueError(f"the saved weight average lacks {sorted(missing)[:3]}")
        for name in self.average:
            self.average[name].copy_(sd[name])
            sd[name].copy_(state["training"][name])
        self.updates = int(state.get("updates", 0))
