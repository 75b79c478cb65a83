"""Typed configuration for every stage, validated in ``__post_init__``.

The resolved config is written to the cache / run folder and into every checkpoint, so a model can
be rebuilt and its preprocessing repeated exactly at predict time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A dataclass (nested ones too) as plain builtins, safe for YAML/JSON and ``weights_only`` loads."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict) -> T:
    """Build ``cls`` from a dict, ignoring unknown keys (older/newer files) and recursing into nested dataclasses."""
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name, f in hints.items():
        if name not in data:
            continue
        value = data[name]
        ftype = f.type if isinstance(f.type, type) else _NESTED.get(str(f.type))
        if ftype is not None and dataclasses.is_dataclass(ftype) and isinstance(value, dict):
            value = from_dict(ftype, value)
        kwargs[name] = value
    return cls(**kwargs)


@dataclass
class PreprocessConfig:
    """How a face clip is made from a video: shared by ``preprocess`` and ``predict``."""

    frames: int = 20  # frames sampled evenly across the whole video
    size: int = 112  # side of the square face crop, pixels
    margin: float = 0.3  # extra context around the detected face box (fraction of its side)
    detector: str = "dlib"  # face detector backend by name: dlib | haar | center
    detect_max_side: int = 640  # frames are down-scaled to this longest side before detection
    upsample: int = 1  # dlib HOG up-sampling passes (finds small faces)
    max_decode_side: int = 1920  # cap on decoded resolution (larger videos are refused / scaled)
    max_duration_s: float = 3600.0  # cap on the seconds of video considered
    max_pixels: int = 4096 * 4096  # frames claiming more pixels than this are refused
    no_face: str = "center"  # when no face is found: center (crop the centre, status no_face) | skip

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if not 16 <= self.size <= 1024:
            raise ValueError("size must be between 16 and 1024 pixels")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError("margin must be between 0 and 2")
        if self.upsample < 0:
            raise ValueError("upsample must be >= 0")
        if self.no_face not in ("center", "skip"):
            raise ValueError("no_face must be 'center' or 'skip'")
        if self.detect_max_side < 64:
            raise ValueError("detect_max_side must be >= 64")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network (stored in every checkpoint)."""

    name: str = "resnext_lstm"  # model registry name
    backbone: str = "resnext50_32x4d"  # backbone registry name
    pretrained: bool = True  # ImageNet weights through torchvision's weight enum
    weights_file: Optional[str] = None  # local backbone weights file (overrides pretrained download)
    hidden_size: int = 2048
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.4
    num_classes: int = 2
    freeze_backbone: bool = False

    def __post_init__(self) -> None:
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError("hidden_size and num_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.num_classes != 2:
            raise ValueError("only binary REAL/FAKE classification is supported (num_classes=2)")


@dataclass
class TrainConfig:
    """One training run; written to ``runs/NAME/config.yaml`` and into each checkpoint."""

    cache: str = ""
    name: str = ""
    runs_dir: str = "runs"
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-5
    weight_decay: float = 1e-5
    optimizer: str = "adamw"  # adam | adamw
    scheduler: str = "cosine"  # cosine | step | none
    seq_len: int = 20
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_loss"  # val_loss | val_auc | val_f1 | val_accuracy
    balance: str = "weighted_loss"  # weighted_loss | sampler | none
    grad_clip: float = 1.0
    max_nonfinite: int = 5  # consecutive non-finite steps before stopping with an error
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 + scaler)
    channels_last: bool = True  # on CUDA
    compile: bool = False
    workers: int = 2
    device: str = "auto"
    resume: bool = False
    threshold_method: str = "eer"  # eer | f1 | fixed
    limit_train_batches: int = 0  # 0 = all (debugging and tests)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = from_dict(ModelConfig, self.model)
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.seq_len < 1:
            raise ValueError("seq_len must be >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.monitor not in ("val_loss", "val_auc", "val_f1", "val_accuracy"):
            raise ValueError("monitor must be val_loss, val_auc, val_f1 or val_accuracy")
        if self.balance not in ("weighted_loss", "sampler", "none"):
            raise ValueError("balance must be weighted_loss, sampler or none")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError("optimizer must be adam or adamw")
        if self.scheduler not in ("cosine", "step", "none"):
            raise ValueError("scheduler must be cosine, step or none")
        if self.threshold_method not in ("eer", "f1", "fixed"):
            raise ValueError("threshold_method must be eer, f1 or fixed")


_NESTED = {"ModelConfig": ModelConfig, "PreprocessConfig": PreprocessConfig}
