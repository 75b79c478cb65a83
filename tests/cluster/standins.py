"""Misbehaving stand-ins for the per-video work, run inside Ray actors by the cluster tests.

They live in their own small module (imported by reference in the actors: the repository root is on
the workers' ``PYTHONPATH``) and import only the package. A video named ``victim*`` makes its first
attempt announce its process id in ``<video>.started`` and wait to be killed from outside; a video
named ``poison*`` ends its worker on every attempt.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

KILL_WAIT_S = 120.0  # the test kills the announcing process long before this


def _misbehave(path: str) -> None:
    name = Path(path).name
    if name.startswith("poison"):
        os._exit(13)
    if name.startswith("victim"):
        marker = Path(path).with_suffix(".started")
        if not marker.exists():
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(str(os.getpid()))
            tmp.rename(marker)
            time.sleep(KILL_WAIT_S)


def preprocess_task(rec: tuple):
    """``data.preprocess._TASK`` with the misbehaviour above."""
    from deepfake_detector.data import preprocess

    _misbehave(rec[0])
    return preprocess._process_one(rec)


def predict_extract(path: str, cfg):
    """``inference.extract_video`` with the misbehaviour above."""
    from deepfake_detector import inference

    _misbehave(path)
    return inference.extract_video(path, cfg)


def node_recording_task(rec: tuple):
    """``data.preprocess._TASK`` that also notes which Ray node ran the video (in ``$DFD_NODE_LOG``),
    taking a second so that every node's actor gets videos."""
    import ray

    from deepfake_detector.data import preprocess

    log = Path(os.environ["DFD_NODE_LOG"])
    log.mkdir(parents=True, exist_ok=True)
    (log / f"{Path(rec[1]).name}.node").write_text(ray.get_runtime_context().get_node_id())
    time.sleep(1.0)
    return preprocess._process_one(rec)
