"""The GPU FLOP bound used as a floor by the benchmarks: peak dense FLOP/s over the FLOPs per frame.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one small CPU forward (convolutions,
matmuls and the LSTM's gates; element-wise work is not counted, so the bound is optimistic, as a floor
should be). A training step costs about 3x a forward (backward ~2x). Peaks are the vendors' dense
bf16/fp16 tensor-core figures for the card, matched by name; an unknown card has no bound.
"""

from __future__ import annotations

from typing import Optional

import torch

# dense (no sparsity) bf16/fp16 tensor-core peak, TFLOP/s; first matching substring wins
PEAK_TFLOPS = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
    ("V100", 125.0),
    ("T4", 65.0),
]


def peak_tflops(device_name: str) -> Optional[float]:
    """The card's dense bf16/fp16 peak in TFLOP/s, or None when the card is not in the table."""
    for key, value in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def forward_flops_per_frame(model: torch.nn.Module, size: int, frames: int = 2) -> float:
    """Forward FLOPs of one frame (backbone + its share of the LSTM and head), counted on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to("cpu").eval()
    x = torch.zeros(1, frames, 3, size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / frames


def flop_bound_frames_per_s(model: torch.nn.Module, size: int, device_name: str,
                            train: bool) -> Optional[dict]:
    """``{tflops_peak, gflops_per_frame, frames_s}`` for this card, or None without a known peak."""
    peak = peak_tflops(device_name)
    if peak is None:
        return None
    per_frame = forward_flops_per_frame(model, size) * (3.0 if train else 1.0)
    return {"tflops_peak": peak, "gflops_per_frame": per_frame / 1e9, "frames_s": peak * 1e12 / per_frame}
