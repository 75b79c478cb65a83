"""``preprocess --engine ray``: the same per-video task as the local process pool, in Ray actors.

``data.preprocess.run_preprocess(..., engine=RayEngine(...))`` still plans the run (settings guard,
shard, resume), keeps the manifest and prints the summary; only its to-do list is handed to
``RayEngine.run``. Each actor runs ``data.preprocess``'s own task (``extract_clip``, the atomic clip
write, the manifest row) with its settings and face detector loaded once, and writes the clip
straight into the cache, so the cache folder must be a path every node sees (a shared file system).
The rows come back to the driver as the videos finish (with ``max_faces > 1``, a video's other faces'
rows ride on its main row as ``track_rows``; their clips and sidecars are written by the actor). Same clips
(byte for byte), sidecars and ``manifest.csv`` as the local engine, apart from the per-video ``seconds``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..config import PreprocessConfig, to_dict
from ..errors import UserError
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



class PreprocessActor:
    """One Ray actor: ``data.preprocess``'s per-video task, its settings and face detector loaded once."""

    def __init__(self, cfg_dict: dict, out_dir: str, threads: int, task: Callable, ledger: Any,
                 max_crashes: int, hard_timeout_s: Optional[float]) -> None:
        from ..data import cache
        from ..data import preprocess as pp

        if not (Path(out_dir) / cache.CONFIG_NAME).is_file():  # clips written here would be lost
            raise RuntimeError(f"the cache folder {out_dir} {NOT_SHARED} (no {cache.CONFIG_NAME} there on "
                               "this node): --out must be on a file system all nodes share")
        pp._init_worker(cfg_dict, out_dir, threads)
        with contextlib.suppress(Exception):  # a detector that cannot load fails per video, with its reason
            pp._detector_for(pp._WORKER["cfg"])
        self.task = task
        self.error_row = pp._error_row
        self.guard = VideoGuard(ledger, max_crashes, hard_timeout_s)

    def __call__(self, batch: dict) -> dict:
        out = []
        for text in batch["rec"]:
            rec = tuple(json.loads(str(text)))
            row = self.guard.run(rec[1], lambda rec=rec: self.task(rec),
                                 lambda msg, rec=rec: self.error_row(rec, msg))
            out.append(pack(row))
        return {"row": np.array(out, dtype=object)}


class RayEngine:
    """Runs ``run_preprocess``'s to-do list on a Ray cluster (see the module docstring)."""

    name = "ray"

    def __init__(self, options: Optional[RayOptions] = None) -> None:
        self.options = options or RayOptions()
        self.info: Optional[ClusterInfo] = None
        self.actors = 0
        self.duplicates = 0  # rows a retried task sent again (dropped: each video is counted once)

    def describe(self) -> str:
        if self.info is None:
            return "engine: ray (not started)"
        return f"engine: ray, {self.actors} decoding actor(s) on {self.info.describe()}"

    def run(self, todo: list[tuple], cfg: PreprocessConfig, out_dir: Path,
            on_row: Callable[[Any], None]) -> None:
        """Make every clip of ``todo`` (task tuples of ``data.preprocess``) and hand each row to
        ``on_row`` once, as it arrives."""
        from ..data import preprocess as pp

        with ray_session(self.options) as info:
            self.info = info
            self.actors = min(self.options.workers or max(1, int(info.cpus)), len(todo))
            hard = (cfg.timeout_s * 2 + pp.HARD_TIMEOUT_GRACE_S) if cfg.timeout_s else None
            kwargs = {"cfg_dict": to_dict(cfg), "out_dir": os.path.abspath(out_dir), "threads": 1,
                      "task": pp._TASK, "ledger": make_ledger(), "max_crashes": self.options.max_crashes,
                      "hard_timeout_s": hard}
            items = [{"rec": json.dumps(list(rec))} for rec in todo]
            gpus = self.options.num_gpus_per_worker  # for a detector that runs on torch (mtcnn)
            ds = dataset_of(items, self.options.videos_per_task).map_batches(
                PreprocessActor, batch_size=1, batch_format="numpy", compute=pool(self.actors), num_cpus=1,
                fn_constructor_kwargs=kwargs, **({"num_gpus": gpus} if gpus else {}))
            seen = self._collect(ds, on_row)
        for rec in todo:  # a video the cluster never answered for (not expected): a row, not a gap
            if rec[1] not in seen:
                on_row(pp._error_row(rec, "no result from the Ray cluster (lost); a rerun retries it"))

    def _collect(self, ds: Any, on_row: Callable[[Any], None]) -> set:
        import ray

        seen: set = set()
        try:
            for out in iter_rows(ds):
                row = unpack(out["row"])
                if row.path in seen:
                    self.duplicates += 1
                    continue
                seen.add(row.path)
                on_row(row)
        except ray.exceptions.RayError as exc:
            raise cluster_failure(exc, "what finished is in the manifest: rerun the same command to resume") \
                from None
        return seen


def make_engine(engine: Any, workers: Optional[int] = None) -> Any:
    """``run_preprocess``'s ``engine`` argument as an engine object (None = the local process pool)."""
    if engine is None or engine == "local":
        return None
    if engine == "ray":
        return RayEngine(RayOptions(workers=workers or None))
    if isinstance(engine, str):
        raise UserError(f"unknown engine {engine!r}; use 'local' or 'ray'")
    return engine


__all__ = ["PreprocessActor", "RayEngine", "make_engine"]
