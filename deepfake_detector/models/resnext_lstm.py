"""The seed's classifier, correctly wired: CNN per frame -> pooled features -> LSTM -> mean -> dropout -> FC.

Fixes against the known reference: the LSTM is ``batch_first=True`` (the reference fed ``[B, T, F]``
to a time-first LSTM, so videos in a batch were mixed and the sequence was the batch), it has biases,
dropout acts on the pooled sequence feature (not on the logits) and class index 1 means FAKE.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNeXtLSTM", "CPU_CHUNK_FRAMES"]

# CPU convolutions are fastest on small batches whose activations stay in cache: ResNeXt-50 at 112 px on
# 2 cores runs 47 frames/s in batches of 20-40 frames and 27 frames/s in one batch of 320 (16 clips).
CPU_CHUNK_FRAMES = 32


class ResNeXtLSTM(nn.Module):
    """``forward(x [B, T, 3, H, W]) -> logits [B, 2]`` (index 1 = FAKE).

    Submodules: ``backbone`` (conv trunk -> ``[N, F, h, w]``), ``pool`` (adaptive average pool),
    ``lstm`` (batch_first), ``dropout``, ``fc``. ``frame_features`` and ``head`` expose the two halves
    so features can be cached (frozen backbone) and class-activation maps computed.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        hidden_size: int = 2048,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.4,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.lstm = nn.LSTM(
            feature_dim, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional, bias=True
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)
        self.channels_last = False
        self.freeze_backbone = False

    def train(self, mode: bool = True) -> ResNeXtLSTM:
        """A frozen backbone stays in eval mode (its BatchNorm statistics must not drift)."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def set_channels_last(self, enabled: bool = True) -> ResNeXtLSTM:
        """Store conv weights (and feed inputs) in NHWC: faster convolutions with tensor cores on CUDA."""
        self.channels_last = enabled
        self.backbone.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        return self

    def feature_map(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, F, h, w]``: the last conv feature map (used for heat maps)."""
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.backbone(frames)

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W] -> [N, F]``: one pooled feature vector per frame.

        On a CPU with the backbone in eval mode the frames go through in chunks of
        ``CPU_CHUNK_FRAMES`` (same numbers: eval-mode BatchNorm treats frames independently). In
        training mode BatchNorm's batch statistics need the whole batch, so it is never chunked.
        """
        n = frames.shape[0]
        if frames.device.type == "cpu" and not self.backbone.training and n > CPU_CHUNK_FRAMES:
            return torch.cat([self._pooled(c) for c in frames.split(CPU_CHUNK_FRAMES)])
        return self._pooled(frames)

    def _pooled(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.feature_map(frames)), 1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, T, F] -> logits [B, 2]``: LSTM over time, mean over time, dropout, linear."""
        out, _ = self.lstm(features)
        return self.fc(self.dropout(out.mean(dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        feats = self.frame_features(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        return self.head(feats)
