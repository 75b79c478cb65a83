"""Device and precision rules, shared by training, evaluation and inference (one rule each).

- ``auto`` means CUDA when there is one, else the CPU; asking for a device that is not there is a user
  error, never a silent fallback.
- Mixed precision runs only on CUDA: bf16 where the card supports it, else fp16 with a gradient scaler
  (training); the CPU always computes in fp32, so CPU results are the reference numbers.
- channels_last memory layout only on CUDA (it is slower on CPUs).
"""

from __future__ import annotations

from typing import Any, Optional

from .errors import UserError

__all__ = ["resolve_device", "amp_dtype", "grad_scaler", "precision_name", "use_channels_last"]


def resolve_device(name: str = "auto", local_rank: Optional[int] = None) -> Any:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> ``cuda:local_rank`` under ``torchrun``.

    An explicit device that does not exist here (no CUDA, index out of range, no MPS) is a ``UserError``.
    """
    import torch

    spec = (name or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r} ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available here (use --device cpu)")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise UserError(f"device {name!r} requested but only {n} CUDA device(s) exist")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {name!r} requested but MPS is not available here")
    return dev


def amp_dtype(device: Any, enabled: bool = True) -> Any:
    """The autocast dtype for ``device``: None (fp32) off CUDA or when disabled; bf16 where supported."""
    import torch

    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def grad_scaler(dtype: Any) -> Any:
    """A ``GradScaler`` for fp16 training (its small range underflows gradients); None otherwise."""
    import torch

    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def precision_name(dtype: Any) -> str:
    """How a run records its precision: ``off`` (fp32), ``bf16`` or ``fp16``."""
    import torch

    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def use_channels_last(device: Any, requested: bool = True) -> bool:
    """channels_last pays off on CUDA tensor cores only."""
    return bool(requested and device.type == "cuda")
