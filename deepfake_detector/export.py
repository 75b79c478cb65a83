"""Export a checkpoint to a self-describing ONNX file, and run such a file with ONNX Runtime.

Why ONNX: a screening service pays for CPU time, and ONNX Runtime runs the same network faster than eager
PyTorch on a CPU (measured in ``benchmarks/bench_onnx.py``) with a much smaller install (``onnxruntime``
only, no torch kernels needed for the network). The file carries everything ``predict`` needs besides the
weights in its ``metadata_props`` -- sequence length, the whole preprocess config, threshold, labels,
normalisation, model config, calibration, package version, source checkpoint sha256 -- so a ``.onnx`` file
is a drop-in replacement for the checkpoint: ``Detector.from_checkpoint("model.onnx")`` decodes, samples,
crops and normalises exactly as with the ``.pt`` file; only the network call differs (:class:`OnnxNet`).

The graph: input ``clips`` float32 ``[batch, frames, 3, S, S]`` (ImageNet-normalised, the tensor
``clips_to_device`` makes; dynamic batch and frame count), outputs ``logits`` ``[batch, 2]`` and ``p_fake``
``[batch]`` (softmax index 1 = FAKE). Normalisation stays outside the graph so the runtime path is the
PyTorch one up to the network call.

Every export is checked before it is kept: ONNX Runtime and PyTorch score the same random clips and the
file is only written if max |ΔP(FAKE)| <= :data:`TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from . import __version__
from .config import from_dict, preprocess_config_from_record, to_dict
from .constants import FAKE, REAL
from .errors import UserError
from .utils import process_umask, sha256_file

log = logging.getLogger(__name__)

__all__ = ["export_onnx", "load_onnx", "is_onnx_file", "read_metadata", "OnnxNet", "OnnxModel",
           "ExportResult", "EXTRA_HINT", "TOLERANCE", "FORMAT_KEY"]

#: the metadata key that marks our files; its value is the metadata layout's version
FORMAT_KEY = "deepfake_detector_onnx"
FORMAT_VERSION = 1
EXTRA_HINT = "pip install 'deepfake-detector[onnx]'"
TOLERANCE = 1e-3  # max |ΔP(FAKE)| between ONNX Runtime and PyTorch for an export to be kept
INPUT_NAME = "clips"
OUTPUT_NAMES = ("logits", "p_fake")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
PathLike = Union[str, os.PathLike]
#: metadata values stored as plain text; every other key of ours holds JSON
STRING_KEYS = ("input", "name", "channel_order", "preprocess_kind", "checkpoint_version", "package_version",
               "source_checkpoint", "source_sha256")
JSON_KEYS = (FORMAT_KEY, "seq_len", "frames", "crop_size", "preprocess", "pad_short", "threshold", "labels",
             "mean", "std", "model_config", "config", "metrics", "calibration", "legacy", "epoch")


def require(module: str, what: str) -> Any:
    """Import an optional dependency of the ``onnx`` extra, or one ``UserError`` line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{what} needs the '{module}' package ({exc}); install it with: {EXTRA_HINT}"
                        ) from None


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and how closely ONNX Runtime matched PyTorch."""

    path: Path
    max_dp: float  # max |ΔP(FAKE)|, ONNX Runtime vs PyTorch, on random clips
    max_dlogit: float
    dynamic_frames: bool
    seconds: float
    size_bytes: int
    metadata: dict = field(default_factory=dict)


class _ExportNet(nn.Module):
    """The network as one graph: all frames of the batch through the trunk at once.

    ``ResNeXtLSTM.frame_features`` chunks frames on a CPU (a PyTorch cache effect); in a traced graph that
    Python branch would freeze one batch size, so the export calls the same submodules without it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = clips.shape[0], clips.shape[1]
        frames = clips.reshape(b * t, *clips.shape[2:])
        feats = torch.flatten(self.model.pool(self.model.backbone(frames)), 1)
        logits = self.model.head(feats.reshape(b, t, -1))
        return logits, torch.softmax(logits, dim=1)[:, 1]


def export_onnx(checkpoint: PathLike, out: PathLike, *, legacy: Optional[bool] = None,
                legacy_mode: str = "fixed", legacy_frames: Optional[int] = None,
                legacy_preprocess: Optional[str] = None, tolerance: float = TOLERANCE) -> ExportResult:
    """Write ``checkpoint`` as a self-describing ONNX file at ``out``, verified against PyTorch.

    The file appears at ``out`` only once ONNX Runtime matched PyTorch within ``tolerance``; otherwise
    a ``UserError`` says by how much it missed and nothing is left behind.
    """
    from .inference import Detector

    for module in ("onnx", "onnxscript", "onnxruntime"):
        require(module, "exporting to ONNX")
    if tuple(int(p) for p in torch.__version__.split(".")[:2] if p.isdigit()) < (2, 6):
        raise UserError(f"exporting to ONNX needs torch >= 2.6 (its dynamo exporter); this is "
                        f"{torch.__version__}")
    t0 = time.perf_counter()
    det = Detector.from_checkpoint(checkpoint, device="cpu", workers=0, legacy=legacy,
                                   legacy_mode=legacy_mode, legacy_frames=legacy_frames,
                                   legacy_preprocess=legacy_preprocess, amp=False)
    if isinstance(det.model, OnnxNet):
        raise UserError(f"{checkpoint} is already an ONNX model; export the PyTorch checkpoint it came from")
    if (det.meta.get("legacy") or {}).get("mode") == "exact":
        raise UserError("--legacy-mode exact cannot be exported (the reference's network runs each frame as "
                        "its own batch); export with --legacy-mode fixed")
    meta = build_metadata(det, Path(det.meta["checkpoint"]))  # a run folder resolved to its best.pt
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending in .onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    size = int(det.preprocess.size)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        dynamic = _export_graph(det.model, det.seq_len, size, meta, tmp)
        dp, dlogit = check_export(det.model, tmp, det.seq_len, size)
        if not dp <= tolerance:
            raise UserError(f"export check failed: ONNX Runtime differs from PyTorch by max |ΔP(FAKE)| = "
                            f"{dp:.2e} (> {tolerance:g}) on random clips; {out} was not written")
        os.chmod(tmp, 0o666 & ~process_umask())  # mkstemp made it private; a model file is not
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path=out, max_dp=dp, max_dlogit=dlogit, dynamic_frames=dynamic,
                        seconds=time.perf_counter() - t0, size_bytes=out.stat().st_size, metadata=meta)


def build_metadata(det: Any, checkpoint: Path) -> dict[str, str]:
    """Everything ``predict`` needs besides the weights, as the string pairs ONNX ``metadata_props`` hold."""
    from .data.dataset import IMAGENET_MEAN, IMAGENET_STD
    from .data.reference import ReferencePreprocess

    config = det.meta.get("config") or {}
    values = {
        FORMAT_KEY: FORMAT_VERSION,
        "seq_len": det.seq_len,
        "frames": int(det.preprocess.frames),
        "crop_size": int(det.preprocess.size),
        "preprocess": to_dict(det.preprocess),
        "preprocess_kind": "reference" if isinstance(det.preprocess, ReferencePreprocess) else "ours",
        "pad_short": det.pad_short,
        "threshold": det.threshold,
        "labels": [REAL, FAKE],
        "channel_order": det.channel_order,
        "mean": [float(v) for v in IMAGENET_MEAN],
        "std": [float(v) for v in IMAGENET_STD],
        "input": f"{INPUT_NAME}: float32 [batch, frames, 3, crop_size, crop_size], channel_order, "
                 "(x / 255 - mean) / std",
        "model_config": config.get("model") or {},
        "config": config,
        "metrics": det.meta.get("metrics") or {},
        "calibration": det.meta.get("calibration"),
        "legacy": det.meta.get("legacy"),
        "name": det.meta.get("name", ""),
        "epoch": det.meta.get("epoch"),
        "checkpoint_version": det.meta.get("version", ""),
        "package_version": __version__,
        "source_checkpoint": checkpoint.name,
        "source_sha256": sha256_file(checkpoint),
    }
    return {k: str(v) if k in STRING_KEYS else json.dumps(v, default=str) for k, v in values.items()}


def _export_graph(model: nn.Module, seq_len: int, size: int, meta: dict[str, str], path: Path) -> bool:
    """Export with dynamic batch (and frame count when the exporter manages it); True when T is dynamic."""
    net = _ExportNet(model).eval()
    example = torch.zeros(2, max(2, seq_len), 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=1, max=4096)
    try:
        program, dynamic = _torch_export(net, example, {INPUT_NAME: {0: batch, 1: frames}}), True
    except Exception as exc:  # the exporter's limits, not the user's: fall back to the trained length
        log.info("dynamic frame count not exportable (%s); exporting %d frames", exc, seq_len)
        try:
            program, dynamic = _torch_export(net, example[:, :seq_len], {INPUT_NAME: {0: batch}}), False
        except Exception as exc2:
            first = (str(exc2).strip().splitlines() or [""])[0][:300]
            raise UserError(f"ONNX export failed: {type(exc2).__name__}: {first}") from None
    program.model.producer_name = "deepfake-detector"
    program.model.producer_version = __version__
    program.model.metadata_props.update(meta)
    program.save(str(path))
    return dynamic


def _torch_export(net: nn.Module, example: torch.Tensor, shapes: dict) -> Any:
    """``torch.onnx.export`` (the dynamo exporter; ONNX's own LSTM op), without its progress chatter."""
    import io

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(net, (example,), dynamo=True, input_names=[INPUT_NAME],
                                 output_names=list(OUTPUT_NAMES), dynamic_shapes=shapes, optimize=True,
                                 verbose=False)


def check_export(model: nn.Module, path: Path, seq_len: int, size: int, seed: int = 0) -> tuple[float, float]:
    """Max |ΔP(FAKE)| and max |Δlogit| of ONNX Runtime vs PyTorch on random uint8 clips (batches 3 and 1).

    The clips go through ``clips_to_device``, the normalisation ``predict`` applies, then each runtime.
    """
    from .data.dataset import clips_to_device

    sess = _session(path, [CPU])
    gen = torch.Generator().manual_seed(seed)
    dp = dl = 0.0
    for b in (3, 1):
        raw = torch.randint(0, 256, (b, seq_len, size, size, 3), dtype=torch.uint8, generator=gen)
        x = clips_to_device(raw, "cpu")
        with torch.inference_mode():
            ref = model.eval()(x).float()
        got = torch.from_numpy(sess.run([OUTPUT_NAMES[0]], {INPUT_NAME: x.numpy()})[0]).float()
        dl = max(dl, float((ref - got).abs().max()))
        dp = max(dp, float((torch.softmax(ref, 1)[:, 1] - torch.softmax(got, 1)[:, 1]).abs().max()))
    return (dp if math.isfinite(dp) else math.inf), dl


# --------------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------------


def is_onnx_file(path: PathLike) -> bool:
    """An ``.onnx`` name, or ONNX content under another name (a protobuf ``ir_version`` field first;
    PyTorch files start with a zip or pickle header instead)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x08 and head[1] < 0x80


def _session(path: Path, providers: list, threads: int = 0) -> Any:
    """An ONNX Runtime session; a file ONNX Runtime cannot read is one ``UserError`` line."""
    ort = require("onnxruntime", "running an ONNX model")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # decoding workers share the cores: idle ONNX threads sleep instead of spinning
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"cannot read ONNX model {path}: not a valid ONNX file ({detail})") from None


def _providers(device: str) -> list:
    """ONNX Runtime providers for ``--device``: CUDA when asked (or ``auto`` finds one), else CPU."""
    ort = require("onnxruntime", "running an ONNX model")
    spec = (device or "auto").strip().lower()
    has_cuda = CUDA in ort.get_available_providers()
    if spec == "cpu":
        return [CPU]
    if spec == "auto":
        return [CUDA, CPU] if has_cuda and torch.cuda.is_available() else [CPU]
    if spec == "cuda" or spec.startswith("cuda:"):
        if not has_cuda:
            raise UserError(f"device {device!r} requested but this onnxruntime has no CUDA provider "
                            "(pip install onnxruntime-gpu, or use --device cpu)")
        index = spec.partition(":")[2]
        if index and not index.isdigit():
            raise UserError(f"unknown device {device!r}")
        return [(CUDA, {"device_id": int(index or 0)}), CPU]
    raise UserError(f"device {device!r} is not supported with an ONNX model (use auto, cpu or cuda[:N])")


def read_metadata(props: dict, path: PathLike) -> dict:
    """Our metadata (JSON values decoded), or one ``UserError`` line for an ONNX file that is not ours."""
    if FORMAT_KEY not in props:
        raise UserError(f"{path} is an ONNX model without deepfake-detector metadata (frames, crop size, "
                        "threshold...); export it with 'deepfake-detector export CHECKPOINT --format onnx'")
    try:
        meta = {k: json.loads(v) if k in JSON_KEYS else v for k, v in props.items()}
        version = int(meta[FORMAT_KEY])
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: unreadable deepfake-detector metadata ({exc})") from None
    if version > FORMAT_VERSION:
        raise UserError(f"{path}: ONNX metadata version {version} is newer than this deepfake-detector reads "
                        f"({FORMAT_VERSION}); upgrade the package")
    missing = [k for k in ("seq_len", "preprocess", "threshold", "channel_order") if k not in meta]
    if missing:
        raise UserError(f"{path}: deepfake-detector metadata lacks {', '.join(missing)}; export it again")
    return meta


class OnnxNet(nn.Module):
    """The ONNX Runtime session in the place of the PyTorch network: ``forward(clips) -> logits``.

    An ``nn.Module`` without parameters so ``Detector`` runs it unchanged (same batching, same
    ``clips_to_device`` normalisation, same softmax). ONNX Runtime sessions are safe to call from several
    threads (``serve --workers N``). No gradients: heat maps need the PyTorch checkpoint.
    """

    explainable = False

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([OUTPUT_NAMES[0]], {INPUT_NAME: arr})[0])


@dataclass
class OnnxModel:
    """An opened ONNX file: the network and what ``Detector`` needs around it."""

    net: OnnxNet
    preprocess: Any
    seq_len: int
    threshold: float
    channel_order: str
    pad_short: bool
    meta: dict


def load_onnx(path: PathLike, device: str = "auto") -> OnnxModel:
    """Open an exported file with ONNX Runtime (CPU, or CUDA when asked and available)."""
    from .data.reference import ReferencePreprocess

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    providers = _providers(device)
    sess = _session(path, providers)
    meta = read_metadata(dict(sess.get_modelmeta().custom_metadata_map), path)
    reference = meta.get("preprocess_kind") == "reference"
    try:  # a record from before a setting existed reads it with its old meaning, as checkpoints do
        pcfg = (from_dict(ReferencePreprocess, meta["preprocess"]) if reference
                else preprocess_config_from_record(meta["preprocess"]))
        seq_len, threshold = int(meta["seq_len"]), float(meta["threshold"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: invalid preprocess config in ONNX metadata: {exc}") from None
    used = sess.get_providers()
    info = {
        "name": str(meta.get("name") or path.stem), "checkpoint": str(path),
        "config": meta.get("config") or {}, "metrics": meta.get("metrics") or {},
        "checkpoint_threshold": threshold, "version": meta.get("checkpoint_version", ""),
        "epoch": meta.get("epoch"), "legacy": meta.get("legacy"), "calibration": meta.get("calibration"),
        "runtime": f"onnxruntime ({', '.join(used)})", "onnx": {k: meta.get(k) for k in (
            "source_checkpoint", "source_sha256", "package_version")},
    }
    return OnnxModel(net=OnnxNet(sess), preprocess=pcfg, seq_len=seq_len, threshold=threshold,
                     channel_order=str(meta["channel_order"]), pad_short=bool(meta.get("pad_short", True)),
                     meta=info)
