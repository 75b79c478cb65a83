"""Screen videos with a trained checkpoint: ``Detector`` and ``Prediction``.

``Detector.from_checkpoint`` rebuilds the network from the checkpoint's own config (never
downloading weights) and repeats EXACTLY the preprocessing it was trained with: the same
``extract_clip`` (frame sampling, face detection, crop size and margin) and the same
``eval_transform`` (sequence length, ImageNet normalisation) that ``evaluate`` applies to cached clips.

``predict`` overlaps decoding and the model: worker processes decode and crop videos ahead of the
model (a bounded number in flight), the main process classifies them in batches. A video that
cannot be read becomes a ``Prediction`` with a status and an error, never an exception; a worker
killed by a crashing decoder is replaced and the culprit video isolated.

Example::

    from deepfake_detector.inference import Detector
    det = Detector.from_checkpoint("runs/exp/best.pt")
    for p in det.predict(["a.mp4", "b.mp4"], explain_dir="heatmaps"):
        print(p.path, p.label, p.p_fake, p.status)
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .calibration import Calibration
from .constants import FAKE, REAL, SCORED_STATUSES, VIDEO_EXTENSIONS
from .data.pool import IDLE, imap_resilient
from .data.preprocess import ClipResult
from .device import amp_dtype, resolve_device, use_channels_last
from .errors import DISK_FULL_ERRNOS, WRITE_STOP_ERRNOS, UserError

log = logging.getLogger(__name__)

__all__ = ["Detector", "Prediction", "PREDICTION_FIELDS", "VIDEO_EXTENSIONS", "LABEL_REAL", "LABEL_FAKE"]

LABEL_REAL = REAL
LABEL_FAKE = FAKE
NO_FACE_MODES = ("center", "skip")

PathLike = Union[str, os.PathLike]


@dataclass
class Prediction:
    """The verdict for one video.

    ``p_fake`` is None when the video could not be scored (see ``status``/``error``); ``label`` is
    ``FAKE`` when ``p_fake >= threshold``, ``REAL`` below, ``""`` when unscored.
    """

    path: str
    p_fake: Optional[float] = None
    label: str = ""
    status: str = ""
    error: str = ""
    frames: int = 0
    face_ratio: float = 0.0
    seconds: float = 0.0
    # the heat-map PNG's path (explain_dir given); with ``faces`` listed: the list of the faces' PNGs
    explanation: Optional[Union[str, list]] = None
    # a video with several face tracks (max_faces > 1): one ``{"track", "p_fake", "box"}`` per track (box:
    # mean [x0, y0, x1, y1] of
    # its crop squares in source pixels; with explain_dir also ``"explanation"``: that face's PNG or None);
    # ``p_fake`` is the highest of them. Empty with one face.
    faces: list = field(default_factory=list)
    # scored by segments (``segments=``): one ``{"start", "end", "p_fake", "frames", "status"}`` per time
    # window (seconds from the first frame); ``p_fake`` is the highest window's. ``segment_seconds``: the
    # windows' width, wider than asked when the video would need more than ``max_segments`` windows.
    segments: list = field(default_factory=list)
    segment_seconds: Optional[float] = None

    @property
    def scored(self) -> bool:
        return self.p_fake is not None

    def to_dict(self) -> dict:
        """The fields as builtins; ``faces`` and ``segments`` only when listed (outputs without them keep
        today's keys)."""
        out = asdict(self)
        if not out["faces"]:
            del out["faces"]
        if not out["segments"]:
            del out["segments"], out["segment_seconds"]
        return out


PREDICTION_FIELDS = ["path", "p_fake", "label", "status", "error", "frames", "face_ratio", "seconds",
                     "explanation"]


def label_for(p_fake: Optional[float], threshold: float) -> str:
    """``FAKE`` at or above the threshold, ``REAL`` below, ``""`` when unscored."""
    if p_fake is None:
        return ""
    return LABEL_FAKE if p_fake >= threshold else LABEL_REAL


_UNSCORED = Prediction(path="", status="error", error="no result (bug)")


def _failed(error: str) -> ClipResult:
    """A failure made here (crashed or hung worker, a bug, a bad clip): no clip, status ``error``."""
    return ClipResult(clip=None, status="error", error=error)


# --------------------------------------------------------------------------------------------------
# Decoding workers
# --------------------------------------------------------------------------------------------------


def _worker_init(threads: int = 1) -> None:
    """Quiet, single-threaded decoding workers: the pool provides the parallelism."""
    # No av.logging.set_level() here: its Python log callback, called from FFmpeg's decoder threads,
    # can deadlock against the GIL (see data/preprocess.py::_init_worker).
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover
        pass
    _WORKER["threads"] = int(threads)


_WORKER: dict = {}


def _extract(path: str, cfg: Any) -> Any:
    """Run ``extract_clip`` (which never raises for a bad video); a bug still becomes a status."""
    from .data.preprocess import extract_clip
    from .data.reference import ReferencePreprocess, reference_extract

    try:
        if isinstance(cfg, ReferencePreprocess):  # legacy exact mode: the reference's own preprocessing
            return reference_extract(path, cfg)  # its dlib detector is per thread: no lock needed
        return extract_clip(path, cfg, threads=_WORKER.get("threads", 0))
    except Exception as exc:  # extract_clip's contract is to return a status; report bugs per item
        log.exception("extract_clip failed on %s", path)
        return _failed(f"{type(exc).__name__}: {exc}"[:500])


def _extract_segmented(path: str, cfg: Any, segments: Any) -> Any:
    """``extract_segments`` (never raises for a bad video); a bug still becomes a status."""
    from .data.preprocess import extract_segments

    try:
        return extract_segments(path, cfg, segments, threads=_WORKER.get("threads", 0))
    except Exception as exc:
        log.exception("extract_segments failed on %s", path)
        return _failed(f"{type(exc).__name__}: {exc}"[:500])


def segment_config(segments: Any) -> Any:
    """``predict``'s ``segments`` argument as a ``SegmentConfig`` (None: off): None/False = off, True = the
    defaults (10 s windows, at most 64), a number = the window width in seconds, or a ``SegmentConfig``."""
    from .config import SegmentConfig

    if segments is None or segments is False:
        return None
    if isinstance(segments, SegmentConfig):
        return segments
    try:
        if segments is True:
            return SegmentConfig()
        if isinstance(segments, (int, float)):
            return SegmentConfig(seconds=float(segments))
    except ValueError as exc:
        raise UserError(f"segments: {exc}") from None
    raise UserError(f"segments must be True, a window width in seconds or a SegmentConfig, got {segments!r}")


def extract_video(path: str, cfg: Any) -> Any:
    """One video's ``ClipResult`` exactly as ``predict`` makes it (cheap file checks, then ``extract_clip``
    or the reference's preprocessing); never raises. For engines that decode away from the model
    (``cluster.predict``'s decoding actors); ``Detector.score_clips`` takes the results."""
    pre = Detector._precheck(path)
    if pre is not None:
        return ClipResult(clip=None, status=pre.status, error=pre.error)
    return _extract(path, cfg)


def _iter_extracted(paths: Sequence[str], cfg: Any, workers: int,
                    extract: Any = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(index, ClipResult)`` for every path, decoding ``workers`` videos at a time ahead.

    Decoding runs in ``data.pool.imap_resilient``: bounded in flight, and a video that kills or hangs
    its worker becomes an ``error`` row. ``extract(path, cfg)`` (module-level, default
    ``extract_clip``) does one video. ``(IDLE, None)`` items say "no clip is ready yet": the caller
    may score what it has meanwhile.
    """
    extract = extract or _extract
    if workers <= 0 or len(paths) <= 1:  # in this process: leave its global settings alone
        for i, p in enumerate(paths):
            yield i, extract(p, cfg)
        return
    workers = min(workers, len(paths))
    threads = max(1, (os.cpu_count() or 1) // workers)
    timeout_s = float(getattr(cfg, "timeout_s", 0) or 0)
    hard_timeout = timeout_s * 2 + 60 if timeout_s else None
    yield from imap_resilient(
        functools.partial(extract, cfg=cfg), list(paths), workers,
        failure=lambda _path, msg: _failed(msg),
        initializer=_worker_init, initargs=(threads,), hard_timeout=hard_timeout, idle_marker=True,
    )


def default_workers() -> int:
    """Decoding processes when not told: CPUs - 1 (one core for the model), at least 2, at most 8.

    At least 2 even on a 2-core machine: decoding and the model then take turns on both cores
    (measured there: 1.24 s per 10 s 720p video with 2 workers, 1.56 s with 1, 1.45 s inline)."""
    return max(2, min(8, (os.cpu_count() or 2) - 1))


# --------------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------------


class Detector:
    """A loaded model plus the exact preprocessing it was trained with.

    Build it with :meth:`from_checkpoint`; ``predict`` many videos (decoding in worker processes),
    ``predict_one`` for a single upload (inline, for the HTTP server).
    """

    def __init__(self, model: Any, preprocess: Any, seq_len: int, threshold: float, device: Any = "cpu",
                 batch_size: int = 8, workers: Optional[int] = None, no_face: str = "center",
                 channel_order: str = "rgb", meta: Optional[dict] = None, amp: bool = True,
                 pad_short: bool = True, compile: bool = False, detector_device: Any = None) -> None:
        import torch

        if no_face not in NO_FACE_MODES:
            raise UserError(f"no_face must be one of {', '.join(NO_FACE_MODES)}, got {no_face!r}")
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        if workers is not None and workers < 0:
            raise UserError(f"workers must be >= 0, got {workers}")
        _check_threshold(threshold)
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        # where the face detector runs when it runs on torch (MTCNN): the model's device unless told
        if detector_device is None:
            detector_device = self.device
        self.detector_device = (detector_device if isinstance(detector_device, torch.device)
                                else resolve_device(str(detector_device)))
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.amp_dtype = amp_dtype(self.device, amp)
        if use_channels_last(self.device) and hasattr(self.model, "set_channels_last"):
            self.model.set_channels_last(True)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # batch shapes repeat: pick the fastest kernels once
        # torch.compile: one static graph per batch-size bucket (batches are padded to a power of two,
        # so at most log2(batch_size)+1 compilations); a backend that cannot compile here (no C
        # compiler, unsupported device) is reported once and the eager model takes over.
        self._net: Any = torch.compile(self.model, dynamic=False) if compile else self.model
        self._net_checked = not compile
        self._compile_lock = threading.Lock()
        self.preprocess = preprocess
        self.seq_len = int(seq_len)
        self.threshold = float(threshold)
        self.batch_size = int(batch_size)
        self.workers = default_workers() if workers is None else int(workers)
        self.no_face = no_face
        self.channel_order = channel_order
        self.pad_short = bool(pad_short)  # False: a short clip runs with the frames it has (reference)
        self.meta = dict(meta or {})
        # meta["calibration"] present: scores are calibrated (``threshold`` is then on calibrated scores)
        self.calibration = Calibration.from_dict(self.meta.get("calibration"))
        self._sha256: Optional[str] = None

    # ---- construction -----------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: PathLike, device: str = "auto", threshold: Optional[float] = None,
                        batch_size: int = 8, workers: Optional[int] = None, no_face: str = "center",
                        legacy: Optional[bool] = None, legacy_mode: str = "fixed",
                        legacy_frames: Optional[int] = None, legacy_preprocess: Optional[str] = None,
                        amp: bool = True, compile: bool = False, legacy_readout: Optional[str] = None,
                        calibration: bool = True) -> Detector:
        """Load a checkpoint written by ``train`` (or a reference-implementation state dict).

        Loading uses ``weights_only=True``: a file that would need arbitrary unpickling is refused
        with ``UnsafeFileError``. ``threshold`` overrides the checkpoint's; ``legacy=None``
        auto-detects the reference layout (with a warning), ``legacy_mode`` is ``fixed`` or
        ``exact`` (see docs/legacy.md), ``legacy_frames`` the sequence length it was trained with,
        ``legacy_preprocess`` ``reference`` (first frames, tight crops: default with ``exact``) or
        ``ours`` (default with ``fixed``), ``legacy_readout`` (``exact`` only) ``last`` (the
        reference's predict path, default) or ``mean`` (its training forward). ``compile`` runs the
        network through ``torch.compile`` (worth it for many videos on a GPU; the first batches pay the
        compilation). A checkpoint's calibration (``calibration.Calibration``) is applied to P(FAKE) and
        its threshold mapped with it; ``calibration=False`` gives the raw scores (``meta["calibration"]``
        says which).
        """
        from .checkpoint import load_torch_file, resolve_checkpoint_path

        if workers is None or workers > 0:
            from .data.pool import warm_up

            warm_up()  # the decoding workers' server imports its modules while the model loads
        from .data.reference import LEGACY_PREPROCESS
        from .models.legacy import LEGACY_MODES, is_legacy_state_dict

        if threshold is not None:
            _check_threshold(threshold)
        if legacy_mode not in LEGACY_MODES:
            raise UserError(f"legacy mode must be one of {', '.join(LEGACY_MODES)}, got {legacy_mode!r}")
        if legacy_preprocess not in (None, *LEGACY_PREPROCESS):
            raise UserError(f"legacy preprocessing must be one of {', '.join(LEGACY_PREPROCESS)}, "
                            f"got {legacy_preprocess!r}")
        path = resolve_checkpoint_path(path)  # a run folder means its best.pt
        from .export import is_onnx_file

        if is_onnx_file(path):  # an exported model: same preprocessing, ONNX Runtime for the network
            if legacy:
                raise UserError(f"{path} is an ONNX model (its metadata says how it was exported); "
                                "drop --legacy")
            return cls.from_onnx(path, device=device, threshold=threshold, batch_size=batch_size,
                                 workers=workers, no_face=no_face, compile=compile)
        obj = load_torch_file(path)
        looks_legacy = is_legacy_state_dict(obj)
        if legacy is None and looks_legacy:
            log.warning("%s has the reference implementation's layout (model.*, lstm.*, linear1.*): "
                        "loading it as a legacy checkpoint in '%s' mode. To get the reference's own "
                        "predictions, pass --legacy --legacy-mode exact ('fixed' is only a starting point "
                        "for fine-tuning; see docs/legacy.md)", path.name, legacy_mode)
            legacy = True
        if legacy:
            if not looks_legacy:
                raise UserError(f"{path} is not a reference-implementation state dict "
                                "(expected model.*, lstm.weight_ih_l0, linear1.* keys); drop --legacy")
            return cls._from_legacy(path, obj, device, threshold, batch_size, workers, no_face, legacy_mode,
                                    legacy_frames, legacy_preprocess, amp, compile, readout=legacy_readout)
        if looks_legacy:
            raise UserError(f"{path} is a reference-implementation state dict; load it with --legacy")
        return cls._from_ours(path, obj, device, threshold, batch_size, workers, no_face, amp, compile,
                              calibration=calibration)

    @classmethod
    def from_onnx(cls, path: PathLike, device: str = "auto", threshold: Optional[float] = None,
                  batch_size: int = 8, workers: Optional[int] = None, no_face: str = "center",
                  compile: bool = False) -> Detector:
        """Load a file written by ``deepfake-detector export`` and run it with ONNX Runtime.

        Decoding, sampling, cropping and normalisation are the PyTorch path's (from the file's metadata);
        only the network call differs. ``device`` picks the ONNX Runtime provider (CUDA when asked and
        available, else CPU); the clips are prepared on the CPU. No heat maps: the runtime has no gradients.
        """
        from .export import load_onnx

        if threshold is not None:
            _check_threshold(threshold)
        if compile:
            log.warning("--compile does not apply to an ONNX model (ONNX Runtime optimises the graph itself)")
        onnx = load_onnx(path, device)
        thr = threshold if threshold is not None else onnx.threshold
        return cls(onnx.net, onnx.preprocess, onnx.seq_len, thr, device="cpu", batch_size=batch_size,
                   workers=workers, no_face=no_face, channel_order=onnx.channel_order, meta=onnx.meta,
                   amp=False, pad_short=onnx.pad_short, detector_device=_onnx_detector_device(device))

    @classmethod
    def _from_ours(cls, path: Path, obj: Any, device: str, threshold: Optional[float], batch_size: int,
                   workers: Optional[int], no_face: str, amp: bool, compile: bool = False,
                   calibration: bool = True) -> Detector:
        from .checkpoint import Checkpoint
        from .config import PreprocessConfig
        from .models import model_from_checkpoint

        if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
            raise UserError(f"{path} is not a deepfake-detector checkpoint (needs 'model' and 'config' "
                            "entries; a bare state dict does not say how to preprocess videos)")
        ckpt = Checkpoint.from_dict(obj, path)
        if not ckpt.section("model"):
            raise UserError(f"{path}: checkpoint config has no 'model' section")
        try:
            pcfg = ckpt.preprocess_config()
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: invalid config in checkpoint: {exc}") from None
        if pcfg is None:
            log.warning("%s has no preprocess config; using defaults (results may differ from training)",
                        path.name)
            pcfg = PreprocessConfig()
        train = ckpt.section("train")
        seq_len = int(train.get("seq_len") or pcfg.frames)
        if not isinstance(ckpt.model, dict):
            raise UserError(f"{path}: 'model' entry is not a state dict")
        model = model_from_checkpoint(ckpt, path)
        ckpt_thr = _ckpt_threshold(obj, path)
        cal = Calibration.from_dict(ckpt.calibration) if calibration else None  # --no-calibration: raw scores
        if cal is not None and cal.raw_threshold is None:
            cal.raw_threshold = ckpt_thr
        thr = threshold if threshold is not None else (cal.threshold if cal else ckpt_thr)
        meta = {
            "name": str(train.get("name") or path.stem),
            "checkpoint": str(path),
            "config": ckpt.config,
            "metrics": ckpt.metrics,
            "checkpoint_threshold": ckpt_thr,
            "version": ckpt.version,
            "epoch": ckpt.epoch,
            "legacy": None,
            "calibration": cal.to_dict() if cal else None,
        }
        return cls(model, pcfg, seq_len, thr, device=device, batch_size=batch_size, workers=workers,
                   no_face=no_face, meta=meta, amp=amp, compile=compile)

    @classmethod
    def _from_legacy(cls, path: Path, obj: Any, device: str, threshold: Optional[float], batch_size: int,
                     workers: Optional[int], no_face: str, mode: str, frames: Optional[int],
                     preprocess: Optional[str], amp: bool, compile: bool = False,
                     readout: Optional[str] = None) -> Detector:
        from .data import reference
        from .models import legacy

        sd = legacy.unwrap_state_dict(obj)
        spec = legacy.inspect_legacy(sd)
        if frames is None:
            frames = legacy.legacy_frames_from_name(path)
            if frames is None:
                frames = reference.LEGACY_DEFAULT_FRAMES
                log.warning("legacy checkpoint: sequence length unknown; using %d frames (set "
                            "--legacy-frames to the value it was trained with)", frames)
        if frames < 1:
            raise UserError(f"legacy frames must be >= 1, got {frames}")
        if readout is not None and mode != "exact":
            raise UserError("--legacy-readout applies to --legacy-mode exact only ('fixed' runs this "
                            "project's model, which averages over time)")
        readout = (readout or "last") if mode == "exact" else None  # last: the reference's predict path
        model = (legacy.build_exact_model(sd, spec, readout) if mode == "exact"
                 else legacy.build_fixed_model(sd, spec))
        if mode == "fixed":
            log.info("legacy 'fixed' mode: our LSTM runs over time, unlike the reference's length-1 "
                     "sequences; probabilities differ from the reference (use --legacy-mode exact to "
                     "reproduce them)")
        preprocess = preprocess or ("reference" if mode == "exact" else "ours")
        if preprocess == "reference":
            pcfg: Any = reference.ReferencePreprocess(frames=frames, no_face=no_face)
        else:
            pcfg = reference.legacy_preprocess_config(frames)
        mcfg = legacy.legacy_model_config(spec)
        from .config import to_dict

        meta = {
            "name": path.stem,
            "checkpoint": str(path),
            "config": {"model": to_dict(mcfg), "preprocess": to_dict(pcfg), "train": {"seq_len": frames}},
            "metrics": {},
            "checkpoint_threshold": 0.5,
            "version": "",
            "epoch": None,
            "legacy": {"mode": mode, "frames": frames, "trunk": spec.trunk, "preprocess": preprocess,
                       "channel_order": reference.LEGACY_CHANNEL_ORDER, "readout": readout},
        }
        thr = 0.5 if threshold is None else threshold  # the reference took the arg-max
        if mode == "exact":
            amp = False  # the reference ran in float32; mixed precision would change its numbers
        return cls(model, pcfg, frames, thr, device=device, batch_size=batch_size, workers=workers,
                   no_face=no_face, channel_order=reference.LEGACY_CHANNEL_ORDER, meta=meta, amp=amp,
                   pad_short=preprocess != "reference", compile=compile)

    @property
    def compiled(self) -> bool:
        """Whether the network runs through ``torch.compile`` (False after a compiler failure)."""
        return self._net is not self.model

    # ---- description ------------------------------------------------------------------------------

    def info(self) -> dict:
        """Name, checkpoint hash, config, metrics and threshold (what the server's /info shows)."""
        from .config import to_dict
        from .utils import sha256_file

        ckpt = self.meta.get("checkpoint")
        if self._sha256 is None and ckpt and os.path.isfile(ckpt):
            self._sha256 = sha256_file(ckpt)
        return {
            "name": self.meta.get("name", ""),
            "checkpoint": ckpt,
            "sha256": self._sha256,
            "config": self.meta.get("config", {}),
            "metrics": self.meta.get("metrics", {}),
            "threshold": self.threshold,
            "checkpoint_threshold": self.meta.get("checkpoint_threshold"),
            "version": self.meta.get("version", ""),
            "legacy": self.meta.get("legacy"),
            "runtime": self.meta.get("runtime", "pytorch"),
            "device": str(self.device),
            "seq_len": self.seq_len,
            "preprocess": to_dict(self.preprocess),
            "no_face": self.no_face,
            "compiled": self.compiled,
        }

    # ---- prediction -------------------------------------------------------------------------------

    def predict(self, paths: Union[PathLike, Iterable[PathLike]], explain_dir: Optional[PathLike] = None,
                progress: bool = False, segments: Any = None) -> list[Prediction]:
        """One ``Prediction`` per path, in input order; failures are rows, never exceptions.

        ``segments`` (True, a window width in seconds, or a ``config.SegmentConfig``) scores each video
        window by window and gives it the highest window's score (``Prediction.segments`` lists them)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.fspath(p) for p in paths]
        results: list[Optional[Prediction]] = [None] * len(paths)
        for i, pred in self.iter_predict(paths, explain_dir, progress, segments):
            results[i] = pred
        return [r if r is not None else Prediction(path=paths[i], status="error", error="no result (bug)")
                for i, r in enumerate(results)]

    def predict_one(self, path: PathLike, explain_dir: Optional[PathLike] = None,
                    segments: Any = None) -> Prediction:
        """Classify one video in this process (no worker pool): the HTTP server's entry point."""
        p = os.fspath(path)
        out = None
        for _, pred in self._run([p], explain_dir, progress=False, workers=0, segments=segments):
            out = pred
        return out if out is not None else Prediction(path=p, status="error", error="no result (bug)")

    def iter_predict(self, paths: Sequence[PathLike], explain_dir: Optional[PathLike] = None,
                     progress: bool = False, segments: Any = None) -> Iterator[tuple[int, Prediction]]:
        """Yield ``(index, Prediction)`` as verdicts become available (completion order)."""
        yield from self._run([os.fspath(p) for p in paths], explain_dir, progress, self.workers, segments)

    def clip_config(self) -> Any:
        """The preprocessing config decoders must use for this detector (``extract_video``'s ``cfg``)."""
        return self._extract_config()

    def score_clips(self, items: Sequence[tuple[str, Any]],
                    explain_dir: Optional[PathLike] = None) -> list[Prediction]:
        """One ``Prediction`` per ``(path, ClipResult)`` decoded elsewhere (``extract_video`` in another
        process or on another node), in order, exactly as ``predict`` would give it."""
        target = _ExplainTarget(explain_dir) if explain_dir is not None else None
        out: list[Optional[Prediction]] = [None] * len(items)
        batch: list[tuple[int, str, Any]] = []
        for k, (path, res) in enumerate(items):
            out[k] = self._prediction_from_clip(path, res)
            if out[k] is None:
                batch.append((k, path, res))
        for start in range(0, len(batch), self.batch_size):
            for k, pred in self._score_any(batch[start:start + self.batch_size], target):
                out[k] = pred
        return [p if p is not None else Prediction(path=items[k][0], status="error", error="no result (bug)")
                for k, p in enumerate(out)]

    def _run(self, paths: list[str], explain_dir: Optional[PathLike], progress: bool,
             workers: int, segments: Any = None) -> Iterator[tuple[int, Prediction]]:
        cfg = self._extract_config()
        extract = self._segment_extractor(segments)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(paths), unit="video", desc="predict", leave=False)
        todo: list[str] = []
        todo_idx: list[int] = []
        target = _ExplainTarget(explain_dir) if explain_dir is not None else None  # per call
        try:
            for i, p in enumerate(paths):  # cheap checks first: no worker needed for a missing file
                pre = self._precheck(p)
                if pre is not None:
                    if bar is not None:
                        bar.update(1)
                    yield i, pre
                else:
                    todo.append(p)
                    todo_idx.append(i)
            batch: list[tuple[int, str, Any]] = []

            def score(items: list[tuple[int, str, Any]]) -> Iterator[tuple[int, Prediction]]:
                for out in self._score_any(items, target):
                    if bar is not None:
                        bar.update(1)
                    yield out

            for j, res in _iter_extracted(todo, cfg, workers, extract):
                if j == IDLE:  # the decoders have nothing ready: score what is here while they go on
                    yield from score(batch)
                    batch = []
                    continue
                i, p = todo_idx[j], todo[j]
                pred = self._prediction_from_clip(p, res)
                if pred is not None:
                    if bar is not None:
                        bar.update(1)
                    yield i, pred
                    continue
                batch.append((i, p, res))
                if len(batch) >= self.batch_size:
                    yield from score(batch)
                    batch = []
            yield from score(batch)
        finally:
            if bar is not None:
                bar.close()

    def _segment_extractor(self, segments: Any) -> Any:
        """The per-video extraction for ``segments`` (None: the plain clip, ``_extract``)."""
        from .config import PreprocessConfig

        seg = segment_config(segments)
        if seg is None:
            return None
        if not isinstance(self.preprocess, PreprocessConfig):
            raise UserError("scoring by segments needs this package's preprocessing (not the reference's: "
                            "--legacy-preprocess ours)")
        return functools.partial(_extract_segmented, segments=seg)

    def _extract_config(self):
        import dataclasses

        cfg = self.preprocess
        if any(f.name == "no_face" for f in dataclasses.fields(cfg)):
            cfg = dataclasses.replace(cfg, no_face=self.no_face)
        if any(f.name == "detector_device" for f in dataclasses.fields(cfg)):  # MTCNN follows --device
            cfg = dataclasses.replace(cfg, detector_device=str(self.detector_device))
        return cfg

    @staticmethod
    def _precheck(path: str) -> Optional[Prediction]:
        from .data.preprocess import check_video_file

        try:
            problem = check_video_file(path)
        except (OSError, ValueError) as exc:  # e.g. an embedded NUL byte in the path
            return Prediction(path=path, status="unreadable", error=str(exc)[:300])
        if problem is None:
            return None
        return Prediction(path=path, status=problem[0], error=problem[1])

    def _prediction_from_clip(self, path: str, res: Any) -> Optional[Prediction]:
        """A final Prediction for a clip that will not be scored, else None (goes to the model)."""
        status = str(getattr(res, "status", "error") or "error")
        clip = getattr(res, "clip", None)
        segments = getattr(res, "segments", None)
        if segments and any(self._prediction_from_clip(path, s.clip) is None for s in segments):
            return None  # scored window by window (_score_segments)
        base = Prediction(path=path, status=status, error=str(getattr(res, "error", "") or ""),
                          frames=int(getattr(res, "frames", 0) or 0),
                          face_ratio=float(getattr(res, "face_ratio", 0.0) or 0.0),
                          seconds=round(float(getattr(res, "seconds", 0.0) or 0.0), 4))
        if status not in SCORED_STATUSES or clip is None or getattr(clip, "size", 0) == 0:
            if not base.error and status in SCORED_STATUSES:
                base.error = "no frames to classify"
                base.status = "error" if status == "ok" else status
            return base
        if status == "no_face" and self.no_face == "skip":
            if not base.error:
                base.error = "no face found (skipped: --no-face skip)"
            return base
        return None

    def _to_input(self, clip: Any):
        """The clip as the model's raw input: uint8 ``[T,H,W,3]`` in the model's channel order.

        Normalisation happens on the model's device (``clips_to_device``, the same arithmetic as
        ``eval_transform``): a quarter of the bytes cross to the GPU.
        """
        import numpy as np

        from .data.dataset import eval_clip, uint8_tensor

        arr = np.asarray(clip)
        if self.channel_order == "bgr":
            arr = arr[..., ::-1]
        seq_len = self.seq_len if self.pad_short else min(self.seq_len, len(arr))
        return uint8_tensor(eval_clip(arr, seq_len))

    def _forward(self, x):
        """P(FAKE) for a batch of raw clips ``[B,T,H,W,3]`` (uint8)."""
        import torch

        from .data.dataset import clips_to_device

        b = int(x.shape[0])
        if self.compiled:
            padded = 1 << max(0, b - 1).bit_length()  # 1, 2, 4, 8, ...: few static shapes to compile
            if padded > b:
                x = torch.cat([x, x.new_zeros((padded - b, *x.shape[1:]))])
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = clips_to_device(x, self.device)
        with torch.inference_mode():
            with self._autocast():
                logits = self._call_net(x)
            return torch.softmax(logits.float(), dim=1)[:b, 1].cpu()

    def _autocast(self):
        import contextlib

        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _call_net(self, x):
        """The (compiled) network; a compiler failure on the first call falls back to eager, once."""
        if self._net_checked and not self.compiled:
            return self._net(x)  # eager modules in eval/inference mode are safe to share between threads
        with self._compile_lock:  # compiled graphs are built and guarded per process, not per thread
            return self._call_compiled(x)

    def _call_compiled(self, x):
        import torch

        if self._net_checked:
            return self._net(x)
        try:
            out = self._net(x)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # the backend, not the video: report it and go on without compiling
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            log.warning("torch.compile failed on %s (%s: %s); predicting without compilation",
                        self.device, type(exc).__name__, first)
            self._net = self.model
            self._net_checked = True
            return self.model(x)
        self._net_checked = True
        return out

    def _forward_grouped(self, inputs: list) -> list:
        """P(FAKE) per input; inputs of equal shape run as one batch (short clips may differ)."""
        import torch

        probs: list = [None] * len(inputs)
        groups: dict = {}
        for k, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(k)
        for idx in groups.values():
            out = self._forward(torch.stack([inputs[k] for k in idx]))
            for k, v in zip(idx, out):
                probs[k] = float(v)
        return probs

    def _score_any(self, batch: list[tuple[int, str, Any]],
                   target: Optional[_ExplainTarget]) -> list[tuple[int, Prediction]]:
        """``_score_batch`` for plain clips; a video extracted by segments is scored window by window."""
        plain = [item for item in batch if not getattr(item[2], "segments", None)]
        outs = self._score_batch(plain, target) if plain else []
        return outs + [(i, self._score_segments(p, res, target)) for i, p, res in batch
                       if getattr(res, "segments", None)]

    def _score_segments(self, path: str, res: Any, target: Optional[_ExplainTarget]) -> Prediction:
        """One video's ``Prediction`` from its windows' clips: every window scored, the video's score the
        highest (a short manipulated stretch is not averaged away); the heat map is the top window's."""
        t0 = time.perf_counter()
        rows: list[Optional[Prediction]] = [self._prediction_from_clip(path, s.clip) for s in res.segments]
        todo = [(k, path, s.clip) for k, s in enumerate(res.segments) if rows[k] is None]
        for start in range(0, len(todo), self.batch_size):
            for k, scored in self._score_batch(todo[start:start + self.batch_size], None):
                rows[k] = scored
        done = [r or _UNSCORED for r in rows]
        pred = Prediction(path=path, status=str(res.status), error=str(res.error or ""),
                          frames=int(res.frames), face_ratio=float(res.face_ratio),
                          segment_seconds=round(float(res.segment_seconds), 3),
                          segments=[{"start": s.start, "end": s.end, "p_fake": r.p_fake, "frames": r.frames,
                                     "status": r.status} for s, r in zip(res.segments, done)])
        best = max((k for k, r in enumerate(done) if r.p_fake is not None), key=lambda k: done[k].p_fake,
                   default=None)  # the first of equal windows
        if best is None:
            pred.status = "error"
            pred.error = next((r.error for r in done if r.error), "no window was scored")
        else:
            pred.p_fake, pred.faces = done[best].p_fake, done[best].faces
            pred.label = label_for(pred.p_fake, self.threshold)
            if target is not None:  # the top window's strip, drawn exactly as a plain clip's
                again = self._score_batch([(0, path, res.segments[best].clip)], target)[0][1]
                pred.explanation, pred.faces = again.explanation, again.faces or pred.faces
        pred.seconds = round(float(res.seconds) + time.perf_counter() - t0, 4)
        return pred

    def _score_batch(self, batch: list[tuple[int, str, Any]], target: Optional[_ExplainTarget]):
        import torch

        t0 = time.perf_counter()
        inputs: list = []  # every face track's clip, flat: videos with several faces take several slots
        owner: list[int] = []  # inputs[j] belongs to good[owner[j]]
        good: list[tuple[int, str, Any]] = []
        outs: list[tuple[int, Prediction]] = []
        for i, p, res in batch:
            try:
                xs = [self._to_input(c) for c in [res.clip] + [o.clip for o in getattr(res, "others", ())]]
            except (ValueError, TypeError) as exc:
                pred = self._prediction_from_clip(p, _failed(f"bad clip: {exc}"))
                outs.append((i, pred))  # type: ignore[arg-type]
                continue
            inputs.extend(xs)
            owner.extend([len(good)] * len(xs))
            good.append((i, p, res))
        probs: list[Optional[float]] = []
        err = ""
        if inputs:
            try:
                probs = self._forward_grouped(inputs)
            except RuntimeError as exc:  # e.g. out of memory: retry one by one, report per video
                log.warning("batch of %d failed (%s); retrying one video at a time", len(inputs), exc)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                probs = []
                for x in inputs:
                    try:
                        probs.append(float(self._forward(x.unsqueeze(0))[0]))
                    except RuntimeError as exc1:
                        probs.append(None)
                        err = f"model failed: {str(exc1).splitlines()[0][:300]}"
        share = (time.perf_counter() - t0) / max(1, len(good))
        firsts = [owner.index(k) for k in range(len(good))]  # each video's main face
        for k, ((i, p, res), j) in enumerate(zip(good, firsts)):
            x, track_probs = inputs[j], [q for o, q in zip(owner, probs) if o == k]  # x: raw uint8 [T,H,W,3]
            prob, faces = self._track_scores(res, track_probs)
            pred = Prediction(path=p, status=str(res.status), error=str(getattr(res, "error", "") or ""),
                              frames=int(getattr(res, "frames", 0) or 0),
                              face_ratio=float(getattr(res, "face_ratio", 0.0) or 0.0))
            if prob is None or not math.isfinite(prob):
                pred.status = "error"
                pred.error = err or "model produced a non-finite score"
            else:
                pred.p_fake = prob
                pred.faces = faces
                pred.label = label_for(prob, self.threshold)
                if target is not None:  # every scored face's strip (the other tracks' inputs follow x)
                    pred.explanation = self._explain(x, res, pred, target,
                                                     [q for o, q in zip(owner, inputs) if o == k][1:])
            pred.seconds = round(float(getattr(res, "seconds", 0.0) or 0.0) + share, 4)
            outs.append((i, pred))
        return outs

    def _track_scores(self, res: Any, probs: list) -> tuple[Optional[float], list]:
        """The video's P(FAKE) and its per-face list from each track's raw score (track 0 first).

        Why the maximum: a fake often swaps one face of several, so the video is as fake as its most
        suspicious face (this raises false positives on many-face real videos; docs/predict.md)."""
        cal = [self.calibration.apply(q) if self.calibration and q is not None and math.isfinite(q) else q
               for q in probs]
        if not cal or cal[0] is None or not math.isfinite(cal[0]):
            return None, []
        if len(cal) == 1:  # one face: the output of a single-face model (no ``faces`` list, one heat map)
            return cal[0], []
        faces = []
        for k, (q, r) in enumerate(zip(cal, [res] + list(getattr(res, "others", ())))):
            if q is not None and math.isfinite(q):
                box = r.track_info(k)["box"] if hasattr(r, "track_info") else None
                faces.append({"track": k, "p_fake": q, "box": box})
        return max(f["p_fake"] for f in faces), faces

    def _explain(self, x: Any, res: Any, pred: Prediction, target: _ExplainTarget,
                 others: Sequence[Any] = ()) -> Optional[Union[str, list]]:
        """The heat-map strips of one scored video: its PNG's path, or (``pred.faces`` listed, max_faces > 1)
        the list of its faces' PNGs, each face's path also put in its ``faces`` entry (``explanation``).

        ``x`` is the main face's model input, ``others`` the other tracks' (``res.others``' order). A video
        with several scored faces names each file by its track (``..._face<k>.png``); one face keeps
        today's name. A face whose strip cannot be written gets None (see ``_explain_one``).
        """
        import dataclasses

        if not pred.faces:
            return self._explain_one(x, res, pred, target)
        tracks, inputs = [res, *getattr(res, "others", ())], [x, *others]
        several = len(pred.faces) > 1
        files: list[str] = []
        for face in pred.faces:
            k = int(face["track"])
            view = dataclasses.replace(  # the strip shows this face's verdict, score and face ratio
                pred, p_fake=face["p_fake"], label=label_for(face["p_fake"], self.threshold), faces=[],
                face_ratio=float(getattr(tracks[k], "face_ratio", 0.0) or 0.0))
            face["explanation"] = self._explain_one(inputs[k], tracks[k], view, target,
                                                    face=k if several else None,
                                                    frame_indices=getattr(res, "indices", None))
            if face["explanation"] is not None:
                files.append(face["explanation"])
        return files or None

    def _explain_one(self, x: Any, res: Any, pred: Prediction, target: _ExplainTarget,
                     **where: Any) -> Optional[str]:
        """Write one heat-map strip (``where``: ``explain_video``'s ``face``, ``frame_indices``); None (and
        a warning) when it cannot.

        An explanation never costs the verdict. A file-system error is one warning line; one that will
        hit every other video too (disk full, quota, read-only, no permission) stops explanations for
        the rest of this predict call, so the run does not render strips it cannot store.
        """
        from . import explain
        from .data.dataset import clips_to_device

        if target.stopped:
            return None
        if not getattr(self.model, "explainable", True):  # an ONNX model: no gradients, no Grad-CAM
            target.stopped = True
            log.warning("no heat maps with an ONNX model (they need gradients): use the PyTorch checkpoint "
                        "for --explain; the verdicts stand")
            return None
        try:
            x = clips_to_device(x.unsqueeze(0), "cpu")[0]  # normalised [T,3,H,W], as the model saw it
            out = explain.explain_video(self.model, x, res, pred, target.folder, threshold=self.threshold,
                                        seq_len=self.seq_len, channel_order=self.channel_order,
                                        device=self.device, **where)
            return os.fspath(out)
        except OSError as exc:
            if exc.errno in WRITE_STOP_ERRNOS:
                target.stopped = True
                log.warning("explanations stopped: cannot write to %s: %s (%s); the remaining videos still "
                            "get their verdicts", _shown(target.folder), exc.strerror or exc,
                            _write_hint(exc.errno))
            else:
                log.warning("could not write the explanation for %s: %s", _shown(pred.path), exc)
            return None
        except Exception as exc:  # a bug: keep the traceback, but the verdict stands
            log.warning("could not write the explanation for %s: %s", _shown(pred.path), exc, exc_info=True)
            return None


class _ExplainTarget:
    """Where one predict call writes its explanations, and whether it gave up on that folder."""

    def __init__(self, folder: PathLike) -> None:
        self.folder = folder
        self.stopped = False


def _write_hint(code: int) -> str:
    """A few words on a write error of ``errors.WRITE_STOP_ERRNOS`` for the warning line."""
    if code == errno.EROFS:
        return "read-only file system"
    if code == getattr(errno, "EDQUOT", None):
        return "disk quota exceeded?"
    return "disk full?" if code in DISK_FULL_ERRNOS else "no permission to write there"


def _shown(path: Any) -> str:
    """A path for a log line (undecodable file-name bytes as replacement characters)."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "replace")


def _onnx_detector_device(device: str) -> Any:
    """Where an ONNX model's face detector (torch) runs: ``device`` as ``device.resolve_device`` reads it;
    the CPU when ONNX Runtime has the CUDA asked for but this torch has not (the provider is checked)."""
    try:
        return resolve_device(device)
    except UserError:
        return resolve_device("cpu")


def _check_threshold(threshold: Any) -> None:
    try:
        ok = 0.0 <= float(threshold) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"threshold must be a probability between 0 and 1, got {threshold!r}")


def _ckpt_threshold(ckpt: dict, path: Path) -> float:
    thr = ckpt.get("threshold")
    try:
        thr = float(thr)
    except (TypeError, ValueError):
        thr = None
    if thr is None or not math.isfinite(thr) or not 0.0 <= thr <= 1.0:
        log.warning("%s has no valid threshold; using 0.5", path.name)
        return 0.5
    return thr
