"""``predict --engine ray``: decoding actors on CPUs feed model actors (on GPUs when the cluster has them).

Two Ray Data stages over the video list, streamed (a bounded number of clips in flight):

1. ``DecodeActor`` (one CPU each): ``inference.extract_video``, the very decoding, sampling and face
   cropping of the local engine, with the face detector loaded once per actor. Clips travel as uint8
   bytes through Ray's object store.
2. ``ScoreActor`` (``num_gpus_per_worker`` GPUs, or one CPU): loads the checkpoint once into a
   ``Detector`` built with the driver's own options and scores batches with ``Detector.score_clips``,
   the local engine's batching, normalisation and thresholds; so P(FAKE) agrees with ``predict`` on one
   machine to float tolerance. Heat maps (``explain_dir``) are written by the model actors.

Videos, the checkpoint and an ``--explain`` folder must be paths every node sees. A worker lost
mid-video is retried by Ray; a video that keeps killing its worker becomes an ``error`` row (see
``runtime``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from ..data.preprocess import ClipResult
from ..errors import UserError
from ..inference import Detector, Prediction
from .runtime import (
    NOT_SHARED,
    ClusterInfo,
    RayOptions,
    VideoGuard,
    cluster_failure,
    dataset_of,
    iter_rows,
    make_ledger,
    pack,
    pool,
    ray_session,
    unpack,
)

log = logging.getLogger(__name__)

class DecodeActor:
    """Decodes and crops videos for the model actors (``inference.extract_video``)."""

    def __init__(self, cfg: Any, threads: int, extract: Optional[Callable], ledger: Any, max_crashes: int,
                 hard_timeout_s: Optional[float]) -> None:
        from .. import inference

        inference._worker_init(threads)
        self.cfg = cfg
        self.extract = extract or inference.extract_video
        self.guard = VideoGuard(ledger, max_crashes, hard_timeout_s)

    def __call__(self, batch: dict) -> dict:
        out = []
        for text in batch["item"]:
            i, path = json.loads(str(text))
            res = self.guard.run(str(i), lambda path=path: self.extract(path, self.cfg),
                                 lambda msg: ClipResult(clip=None, status="error", error=msg))
            out.append(pack((i, path, res)))
        return {"clip": np.array(out, dtype=object)}


class ScoreActor:
    """Loads the checkpoint once and scores decoded clips in batches (``Detector.score_clips``)."""

    def __init__(self, checkpoint: str, load: dict, device: str, preprocess: Any,
                 explain_dir: Optional[str]) -> None:
        if not os.path.isfile(checkpoint):
            raise RuntimeError(f"the checkpoint {checkpoint} {NOT_SHARED}: put it on a file system all nodes "
                               "share")
        load = {**load, "device": device, "workers": 0}
        self.detector = Detector.from_checkpoint(checkpoint, **load)
        self.detector.preprocess = preprocess  # the driver's, with its command-line adjustments
        self.explain_dir = explain_dir

    def __call__(self, batch: dict) -> dict:
        idx, items = [], []
        for blob in batch["clip"]:
            i, path, res = unpack(blob)
            idx.append(i)
            items.append((path, res))
        preds = self.detector.score_clips(items, self.explain_dir)
        return {"pred": np.array([pack((i, p)) for i, p in zip(idx, preds)], dtype=object)}


class RayPredictor:
    """``Detector.predict`` on a Ray cluster: same Predictions, in input order (see the module docstring).

    ``detector`` is the driver's (its clip config, batch size and threshold are used); ``load`` are the
    keyword arguments it was built with by ``Detector.from_checkpoint``, so every model actor rebuilds
    the same one (calibration, legacy settings, threshold...)."""

    def __init__(self, detector: Detector, checkpoint: str | os.PathLike, load: dict,
                 options: Optional[RayOptions] = None, extract: Optional[Callable] = None) -> None:
        self.detector = detector
        self.checkpoint = os.path.abspath(os.fspath(checkpoint))
        self.load = {k: v for k, v in load.items() if k not in ("device", "workers")}
        self.device = str(load.get("device") or "auto")
        self.options = options or RayOptions()
        self.extract = extract  # tests: a stand-in for inference.extract_video
        self.info: Optional[ClusterInfo] = None
        self.decoders = self.models = 0
        self.gpus_per_model = 0.0
        self.duplicates = 0

    def describe(self) -> str:
        if self.info is None:
            return "engine: ray (not started)"
        where = f"{self.gpus_per_model:g} GPU(s) each" if self.gpus_per_model else "CPU"
        return (f"engine: ray, {self.decoders} decoding actor(s) and {self.models} model actor(s) ({where}) "
                f"on {self.info.describe()}")

    def _size(self, info: ClusterInfo, n_videos: int) -> None:
        """Model actors on GPUs when there are any (unless --device cpu), decoders on the CPUs left."""
        opts = self.options
        g = opts.num_gpus_per_worker
        if g is None:
            g = 1.0 if info.gpus >= 1 and not self.device.startswith("cpu") else 0.0
        if g > 0 and info.gpus < g:
            raise UserError(f"--num-gpus-per-worker {g:g} needs a GPU on the cluster, which has "
                            f"{info.gpus:g}; use --num-gpus-per-worker 0 to run the model on CPUs")
        self.gpus_per_model = float(g)
        self.models = opts.model_workers or (max(1, int(info.gpus // g)) if g > 0 else 1)
        self.decoders = opts.workers or max(1, int(info.cpus) - self.models)
        self.decoders = max(1, min(self.decoders, n_videos))

    def predict(self, paths: Sequence[str | os.PathLike], explain_dir: Optional[str | os.PathLike] = None,
                progress: bool = False) -> list[Prediction]:
        """One ``Prediction`` per path, in input order; failures are rows, never exceptions."""
        paths = [os.fspath(p) for p in paths]
        out: list[Optional[Prediction]] = [None] * len(paths)
        if not paths:
            return []
        with ray_session(self.options) as info:
            self.info = info
            self._size(info, len(paths))
            ds = self._dataset(paths, explain_dir)
            self._collect(ds, out, progress)
        return [p if p is not None else Prediction(path=paths[k], status="error",
                                                   error="no result from the Ray cluster (lost)")
                for k, p in enumerate(out)]

    def _dataset(self, paths: list[str], explain_dir: Optional[str | os.PathLike]) -> Any:
        cfg = self.detector.clip_config()
        timeout_s = float(getattr(cfg, "timeout_s", 0) or 0)
        decode_kwargs = {"cfg": cfg, "threads": 1, "extract": self.extract, "ledger": make_ledger(),
                         "max_crashes": self.options.max_crashes,
                         "hard_timeout_s": timeout_s * 2 + 60 if timeout_s else None}
        device = "cuda" if self.gpus_per_model > 0 else "cpu"
        score_kwargs = {"checkpoint": self.checkpoint, "load": self.load, "device": device,
                        "preprocess": self.detector.preprocess,
                        "explain_dir": os.path.abspath(explain_dir) if explain_dir else None}
        items = [{"item": json.dumps([i, p])} for i, p in enumerate(paths)]
        ds = dataset_of(items, self.options.videos_per_task).map_batches(
            DecodeActor, batch_size=1, batch_format="numpy", compute=pool(self.decoders), num_cpus=1,
            fn_constructor_kwargs=decode_kwargs)
        resources = {"num_gpus": self.gpus_per_model} if self.gpus_per_model else {"num_cpus": 1}
        return ds.map_batches(ScoreActor, batch_size=self.detector.batch_size, batch_format="numpy",
                              compute=pool(self.models), fn_constructor_kwargs=score_kwargs, **resources)

    def _collect(self, ds: Any, out: list[Optional[Prediction]], progress: bool) -> None:
        import ray
        from tqdm import tqdm

        bar = tqdm(total=len(out), unit="video", desc="predict (ray)", leave=False, disable=not progress)
        try:
            for row in iter_rows(ds):
                i, pred = unpack(row["pred"])
                if out[i] is not None:
                    self.duplicates += 1
                    continue
                out[i] = pred
                bar.update(1)
        except ray.exceptions.RayError as exc:
            raise cluster_failure(exc, "rerun the command when it is fixed") from None
        finally:
            bar.close()


__all__ = ["DecodeActor", "RayPredictor", "ScoreActor"]
