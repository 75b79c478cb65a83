"""Checkpoints: plain tensors and builtins only, written atomically, read with ``weights_only=True``.

A checkpoint dict holds ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``config``
(``{"train", "model", "preprocess"}`` as dicts), ``metrics``, ``threshold`` (on P(FAKE)), ``version``
and ``rng``; a ``last.pt`` whose epoch was the best so far also has ``best_pending`` (best.pt's threshold,
metrics and validation predictions, to rewrite best.pt after a kill between the two saves). Nothing in
it needs arbitrary unpickling, so loading a file from a stranger cannot run
code: such a file is refused with ``UnsafeFileError``.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from typing import Any

import numpy as np
import torch

from ..errors import UnsafeFileError, UserError
from ..utils import atomic_torch_save

log = logging.getLogger(__name__)

__all__ = ["save_checkpoint", "load_checkpoint", "needs_code", "get_rng_state", "set_rng_state", "to_builtin"]


def to_builtin(obj: Any) -> Any:
    """Numpy scalars/arrays and tuples -> Python builtins (what ``weights_only`` loads accept)."""
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def get_rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states in a ``weights_only``-safe form."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict) -> None:
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def needs_code(exc: BaseException) -> bool:
    """True when a ``weights_only`` load failed because the file imports code (not mere corruption)."""
    msg = str(exc).lower()
    return "global" in msg or "reduce" in msg or "not an allowed" in msg


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    """Atomic ``torch.save`` (a killed run leaves the previous file, never a truncated one)."""
    atomic_torch_save(obj, path)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``; refuse anything that needs code to load."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not needs_code(exc):
            raise UserError(
                f"{path}: not a readable checkpoint (corrupt, or a pickle that is not plain tensors)"
            ) from exc
        raise UnsafeFileError(
            f"{path}: refused, this file needs arbitrary code execution to load (it is not a plain "
            f"tensor checkpoint); only load checkpoints you trust with other tools"
        ) from exc
    except Exception as exc:  # truncated zip, not a torch file, ...
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict) or "model" not in obj:
        raise UserError(f"{path}: not a deepfake-detector checkpoint (no 'model' state dict)")
    return obj
