"""The seed's classifier, correctly wired: CNN per frame -> pooled features -> LSTM -> mean -> dropout -> FC.

Fixes against the known reference: the LSTM is ``batch_first=True`` (the reference fed ``[B, T, F]``
to a time-first LSTM, so videos in a batch were mixed and the sequence was the batch), it has biases,
dropout acts on the pooled sequence feature (not on the logits) and class index 1 means FAKE.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNeXtLSTM", "CPU_CHUNK_FRAMES", "POOLINGS"]

# CPU convolutions are fastest on small batches whose activations stay in cache: ResNeXt-50 at 112 px on
# 2 cores runs 47 frames/s in batches of 20-40 frames and 27 frames/s in one batch of 320 (16 clips).
CPU_CHUNK_FRAMES = 32
#: how the LSTM's outputs over time become one vector: the seed's mean, or learned attention weights
POOLINGS = ("mean", "attention")


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
        temporal_diff: bool = False,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        self.feature_dim = feature_dim
        self.temporal_diff = bool(temporal_diff)
        self.pooling = pooling
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        lstm_in = feature_dim * (2 if temporal_diff else 1)
        self.lstm = nn.LSTM(
            lstm_in, hidden_size, num_layers, batch_first=True, bidirectional=bidirectional, bias=True
        )
        out_dim = hidden_size * (2 if bidirectional else 1)
        # attention pooling: one learned score per time step, softmax over time (no module when "mean",
        # so the seed design's state dict and parameter count are unchanged)
        self.attn = nn.Linear(out_dim, 1) if pooling == "attention" else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(out_dim, num_classes)
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
        """``[B, T, F] -> logits [B, 2]``: LSTM over time, mean (or attention) over time, dropout, linear.

        With ``temporal_diff`` the LSTM also sees ``f[t] - f[t-1]`` (zero at t = 0) beside each frame's
        features: order-only fakes differ from real videos in how features change, not in the features.
        """
        if self.temporal_diff:
            diff = torch.diff(features, dim=1, prepend=features[:, :1])
            features = torch.cat([features, diff], dim=2)
        out, _ = self.lstm(features)
        if self.attn is None:
            pooled = out.mean(dim=1)
        else:
            weights = torch.softmax(self.attn(out).float(), dim=1).to(out.dtype)  # [B, T, 1]
            pooled = (weights * out).sum(dim=1)
        return self.fc(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        feats = self.frame_features(x.reshape(b * t, *x.shape[2:])).reshape(b, t, -1)
        return self.head(feats)
