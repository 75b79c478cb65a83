"""THE checkpoint format: what a ``.pt`` file of ours holds, how it is written and how it is read.

A checkpoint is a ``torch.save`` of plain tensors and builtins only, so it loads with
``weights_only=True`` and a file from a stranger cannot run code: one that would need arbitrary
unpickling is refused with ``UnsafeFileError`` before any of it runs. This module holds the package's
only ``torch.load`` (:func:`load_torch_file`), used for our checkpoints, the reference
implementation's state dicts and backbone weight files alike.

Layout (schema :data:`SCHEMA_VERSION`)::

    schema      int, this layout's version (files without it are schema 1 and are upgraded on read)
    version     the package version that wrote the file
    model       the network's state dict (with ``train.ema_epochs``: the weight average, which is what
                was validated)
    config      {"train", "model", "preprocess", "runtime"}: every setting needed to rebuild the model
                and repeat the preprocessing (config.TrainConfig / ModelConfig / PreprocessConfig dicts)
    epoch       the epoch the weights come from
    threshold   decision threshold on P(FAKE) chosen on validation (None in last.pt)
    metrics     validation metrics of that epoch
    calibration score calibration (e.g. {"method": "temperature", "temperature": 1.3}) or None
    + training state in last.pt: optimizer, scheduler, scaler, rng, rng_per_rank, early_stopping and,
      when that epoch was the best so far, best_pending (to rebuild best.pt after a kill between saves);
      ema (with ``train.ema_epochs``: the training weights behind the average, and its update count)

Extending the format is one change here: add the field to :class:`Checkpoint`, bump
:data:`SCHEMA_VERSION` and add an upgrader to :data:`_UPGRADERS` that fills it in for older files.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .config import ModelConfig, PreprocessConfig, TrainConfig, from_dict, preprocess_config_from_record
from .errors import UnsafeFileError, UserError
from .utils import atomic_torch_save, upgrade_schema

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "load_torch_file",
    "resolve_checkpoint_path",
    "upgrade_checkpoint",
    "needs_code",
    "torch_error_detail",
    "to_builtin",
]

SCHEMA_VERSION = 2

#: keys of a last.pt that only resuming a training run needs
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "rng", "rng_per_rank", "early_stopping",
                       "best_pending", "ema")


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


# --------------------------------------------------------------------------------------------------
# Safe loading: the package's only torch.load
# --------------------------------------------------------------------------------------------------

#: ``OSError`` numbers that are about reaching the file; others (torch reports a truncated zip as
#: ``EINVAL``) are about its content.
_ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT, errno.EISDIR, errno.ENXIO}

#: Lines of torch's generic ``weights_only`` advice: they say nothing about this file.
_TORCH_BOILERPLATE = ("weights only load failed", "(1)", "(2)", "in pytorch 2.6", "check the documentation",
                      "please file an issue", "alternatively, to load")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOAD_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError,
                KeyError, TypeError, AttributeError, IndexError)


def needs_code(exc: BaseException) -> bool:
    """True when a ``weights_only`` load failed because the file imports code (not mere corruption)."""
    msg = str(exc).lower()
    return "global" in msg or "reduce" in msg or "not an allowed" in msg


def torch_error_detail(exc: BaseException, limit: int = 300) -> str:
    """The informative part of a ``torch.load`` error as one short line, never cut mid-sentence.

    torch wraps the real reason (``Unsupported global: GLOBAL os.system ...``, ``failed finding central
    directory``) in paragraphs of generic advice; this keeps the first sentence of the first line that
    is not that advice. Only a single sentence longer than ``limit`` is shortened, with a marked "...".
    """
    text = _ANSI.sub("", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        low = ln.lower()
        if "weightsunpickler error:" in low:
            ln = ln[low.index("weightsunpickler error:") + len("weightsunpickler error:"):].strip()
            if not ln:
                continue
        elif low.startswith(_TORCH_BOILERPLATE):
            continue
        sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z(])", ln, maxsplit=1)[0].rstrip(".")
        if len(sentence) > limit:
            sentence = sentence[: limit - 3].rstrip() + "..."
        if isinstance(exc, (pickle.UnpicklingError, RuntimeError)):  # torch's own messages read on their own
            return sentence
        return f"{type(exc).__name__}: {sentence}"
    return type(exc).__name__


def _check_file(path: Path, what: str, error: type[UserError]) -> None:
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if not path.is_file():
        raise error(f"{what} is not a file: {path}")
    if path.stat().st_size == 0:
        raise error(f"{what} is empty (0 bytes): {path}")


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint",
                    error: type[UserError] = UserError) -> Any:
    """``torch.load(weights_only=True)`` on the CPU with one clear error line for every failure.

    Only tensors and builtin containers are ever reconstructed, so a planted pickle payload is refused
    (``UnsafeFileError``) before any of its code can run. Other failures raise ``error`` (a
    ``UserError`` subclass) naming ``what`` the file was meant to be.
    """
    import torch

    path = Path(path)
    _check_file(path, what, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise error(f"cannot load {what} {path}: it needs more memory than is available") from None
    except _LOAD_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno in _ACCESS_ERRNOS:  # the file system, not the content
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
        detail = torch_error_detail(exc)
        if needs_code(exc):  # the file imports code: refused, nothing of it ran
            raise UnsafeFileError(
                f"refusing to load {path}: it contains pickled Python objects that could run code, so it "
                f"was refused unread (only plain state dicts / tensors are accepted; re-save it with "
                f"torch.save(model.state_dict()) where you trust it). Detail: {detail}"
            ) from None
        raise error(f"cannot read {what} {path}: not a readable {what} (corrupt, truncated, or "
                    f"not a PyTorch file; torch: {detail})") from None


# --------------------------------------------------------------------------------------------------
# The format
# --------------------------------------------------------------------------------------------------


def _v1_to_v2(obj: dict) -> dict:
    """Schema 1 (no ``schema`` key): the same entries; calibration did not exist yet."""
    obj.setdefault("calibration", None)
    return obj


#: schema N -> the function that turns a schema-N dict into a schema-(N+1) dict
_UPGRADERS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2}


def upgrade_checkpoint(obj: dict, path: str | os.PathLike = "checkpoint") -> dict:
    """Bring a checkpoint dict of any known schema to :data:`SCHEMA_VERSION` (in place)."""
    obj = upgrade_schema(obj, obj.get("schema", 1), current=SCHEMA_VERSION, upgraders=_UPGRADERS,
                         what="checkpoint", where=path, error=UserError)
    obj["schema"] = SCHEMA_VERSION
    return obj


@dataclass
class Checkpoint:
    """A typed view of one checkpoint of ours (see the module docstring for the layout)."""

    model: dict
    config: dict = field(default_factory=dict)
    epoch: Optional[int] = None
    threshold: Optional[float] = None
    metrics: dict = field(default_factory=dict)
    calibration: Optional[dict] = None
    version: str = ""
    schema: int = SCHEMA_VERSION
    training: dict = field(default_factory=dict)  # TRAINING_STATE_KEYS present in last.pt

    @classmethod
    def from_dict(cls, obj: Any, path: str | os.PathLike = "checkpoint") -> Checkpoint:
        """Validate and upgrade a loaded dict; a file that is not ours is a ``UserError``."""
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise UserError(f"{path}: not a deepfake-detector checkpoint (no 'model' state dict)")
        obj = upgrade_checkpoint(dict(obj), path)
        config = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        metrics = obj.get("metrics") if isinstance(obj.get("metrics"), dict) else {}
        threshold = obj.get("threshold")
        return cls(
            model=obj["model"], config=config, epoch=obj.get("epoch"),
            threshold=None if threshold is None else float(threshold), metrics=metrics,
            calibration=obj.get("calibration"), version=str(obj.get("version") or ""), schema=obj["schema"],
            training={k: obj[k] for k in TRAINING_STATE_KEYS if k in obj},
        )

    def to_dict(self) -> dict:
        """What ``torch.save`` writes: builtins and tensors only."""
        keys = ("schema", "version", "model", "epoch", "threshold", "calibration")
        out = {k: getattr(self, k) for k in keys}
        out.update(config=to_builtin(self.config), metrics=to_builtin(self.metrics), **self.training)
        return out

    def section(self, name: str) -> dict:
        """``config[name]`` as a dict ({} when absent or malformed)."""
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.section("model"))

    def preprocess_config(self) -> Optional[PreprocessConfig]:
        """How the training clips were made; None for a checkpoint that did not record it."""
        pre = self.config.get("preprocess")
        return preprocess_config_from_record(pre) if isinstance(pre, dict) else None

    def train_config(self) -> TrainConfig:
        """The run's TrainConfig with its own model config (settings such as ``feature_views`` are only
        valid with the model they were trained with)."""
        train = {k: v for k, v in self.section("train").items() if k != "model"}
        return from_dict(TrainConfig, {**train, "model": self.model_config()})


def save_checkpoint(ckpt: Checkpoint | dict, path: str | os.PathLike) -> None:
    """Atomic ``torch.save`` (a killed run leaves the previous file, never a truncated one)."""
    obj = ckpt.to_dict() if isinstance(ckpt, Checkpoint) else {"schema": SCHEMA_VERSION, **ckpt}
    atomic_torch_save(obj, path)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or a run folder's ``best.pt`` when ``path`` is a run folder (``runs/NAME``)."""
    path = Path(path)
    if not path.is_dir():
        return path
    best = path / "best.pt"
    if best.is_file():
        return best
    hint = " (it has last.pt: no epoch has a best score yet)" if (path / "last.pt").is_file() else ""
    raise UserError(f"{path} is a folder without best.pt{hint}; give a checkpoint file or a run folder")


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint of ours as an upgraded dict (the training engine's view, with its training state)."""
    path = resolve_checkpoint_path(path)
    return Checkpoint.from_dict(load_torch_file(path), path).to_dict()


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A checkpoint of ours, typed; a run folder means its best.pt."""
    path = resolve_checkpoint_path(path)
    return Checkpoint.from_dict(load_torch_file(path), path)

