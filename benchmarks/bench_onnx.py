"""CPU predict with ONNX Runtime vs eager PyTorch: model stage (frames/s) and end to end (videos/s).

Builds a checkpoint with random weights (``bench_predict.make_checkpoint``: ResNeXt-50 + LSTM 2048 by
default, 20 frames, 112 px crops; nothing downloaded), exports it with ``export_onnx`` (which checks
ONNX Runtime against PyTorch on random clips), then runs both through ``Detector.predict``, the same
code ``predict`` runs, so only the network call differs:

* model stage: ready-made clips (``bench_predict.make_clips``; decoding patched out, ``workers=0``);
* end to end (unless ``--no-e2e``): ``--videos`` generated 10 s 720p H.264 videos with a real face
  (``bench_predict_e2e.make_videos``), default decoding workers, after a warm-up (model loading and the
  worker pool's start excluded).

Both report max |ΔP(FAKE)| between the two runtimes. Prints a table; ``--json`` writes it.

    python -m benchmarks.bench_onnx                                     # ResNeXt-50, 16 clips, 4 videos
    python -m benchmarks.bench_onnx --backbone tiny --clips 8 --videos 2 --seconds 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import print_table, timed, work_dir

COLS = [("stage", "<12", "stage", ""), ("runtime", "<21", "runtime", ""), ("unit", "<9", "unit", ""),
        ("rate", ">8", "rate", ".3f"), ("speedup", ">8", "speedup", ".2f"),
        ("max |dP|", ">9", "max_dp", ".1e")]


def _detectors(ckpt: Path, onnx: Path, workers, batch: int) -> dict:
    from deepfake_detector.inference import Detector

    opts = {"device": "cpu", "workers": workers, "batch_size": batch}
    return {"pytorch (eager fp32)": Detector.from_checkpoint(ckpt, **opts),
            "onnxruntime (CPU EP)": Detector.from_checkpoint(onnx, **opts)}


def _race(dets: dict, paths: list[str], warm: list[str], repeat: int) -> dict:
    """Median seconds and P(FAKE) per runtime; the runtimes take turns in each repeat, so a machine
    shared with other jobs slows both alike."""
    for det in dets.values():
        det.predict(warm)  # warm-up: kernels, decoders, dlib, the worker pool's start
    times: dict = {name: [] for name in dets}
    probs: dict = {}
    for _ in range(max(1, repeat)):
        for name, det in dets.items():
            seconds, preds = timed(lambda d=det: d.predict(paths), 1)
            times[name].append(seconds)
            probs[name] = _scores(preds)
    return {name: (float(np.median(times[name])), probs[name]) for name in dets}


def _rows(stage: str, unit: str, amount: int, results: dict) -> list[dict]:
    """One row per runtime: rate, speedup over PyTorch, max |ΔP| vs PyTorch, the range of P it compared."""
    (base_t, base_p), rows = next(iter(results.values())), []
    for name, (seconds, probs) in results.items():
        dp = float(np.max(np.abs(np.array(probs) - np.array(base_p))))
        rows.append({"stage": stage, "runtime": name, "unit": unit, "rate": amount / seconds,
                     "speedup": base_t / seconds, "max_dp": dp, "seconds": round(seconds, 3),
                     "p_min": round(min(probs), 6), "p_max": round(max(probs), 6)})
    return rows


def _scores(preds: list) -> list[float]:
    bad = [(p.status, p.error) for p in preds if p.p_fake is None]
    if bad:
        raise RuntimeError(f"some videos were not scored: {bad[:3]}")
    return [float(p.p_fake) for p in preds]


def model_stage(args, ckpt: Path, onnx: Path) -> list[dict]:
    """Frames/s of ``Detector.predict`` on ready-made clips (no decoding), per runtime."""
    from benchmarks import bench_predict as bp
    from deepfake_detector import inference

    clips = bp.make_clips(args.clips, args.frames, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="bench_onnx_"))
    original = bp.patch_extract(clips)
    try:
        paths = []
        for i in range(args.clips):
            (tmp / f"clip_{i}.mp4").write_bytes(b"x")
            paths.append(str(tmp / f"clip_{i}.mp4"))
        dets = _detectors(ckpt, onnx, 0, args.batch_size)
        results = _race(dets, paths, paths[:args.batch_size], args.repeat)
    finally:
        inference._extract = original  # type: ignore[assignment]
        shutil.rmtree(tmp, ignore_errors=True)
    return _rows("model stage", "frames/s", args.clips * args.frames, results)


def end_to_end(args, ckpt: Path, onnx: Path, work: Path) -> list[dict]:
    """Videos/s of ``Detector.predict`` on generated 720p videos, per runtime (model load excluded)."""
    from benchmarks.bench_predict_e2e import make_videos

    paths = [str(p) for p in make_videos(work, args.videos, args.seconds, 1280, 720, 300)]
    results = _race(_detectors(ckpt, onnx, args.workers, args.batch_size), paths, paths[:2], args.repeat)
    return _rows("end to end", "videos/s", len(paths), results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnext50_32x4d", help="tiny for quick runs")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--clips", type=int, default=16, help="model stage: clips per timed pass")
    ap.add_argument("--batch-size", type=int, default=8, help="clips per model batch (predict's default)")
    ap.add_argument("--videos", type=int, default=4, help="end to end: number of videos")
    ap.add_argument("--seconds", type=float, default=10.0, help="end to end: length of each video")
    ap.add_argument("--workers", type=int, default=None, help="end to end: decoding processes (default: "
                    "predict's)")
    ap.add_argument("--no-e2e", action="store_true", help="model stage only")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per setup (median)")
    ap.add_argument("--workdir", default=None, help="keep/reuse the checkpoint, .onnx, videos here")
    ap.add_argument("--json", default=None, help="write the report as JSON to this file")
    args = ap.parse_args(argv)

    from benchmarks import bench_predict as bp
    from deepfake_detector.export import export_onnx

    report: dict = {"backbone": args.backbone, "frames": args.frames, "size": args.size}
    with work_dir(args.workdir, "bench_onnx_") as work:
        name = f"onnx_{args.backbone}_{args.frames}f_{args.size}px.pt"
        ckpt = bp.make_checkpoint(work / name, args.backbone, args.frames, args.size, detector="dlib")
        t0 = time.perf_counter()
        exp = export_onnx(ckpt, ckpt.with_suffix(".onnx"))
        report.update(export_s=round(time.perf_counter() - t0, 1), export_check_max_dp=exp.max_dp,
                      onnx_mb=round(exp.size_bytes / 1e6, 1))
        rows = model_stage(args, ckpt, exp.path)
        if not args.no_e2e:
            rows += end_to_end(args, ckpt, exp.path, work)
    report["rows"] = rows
    _print(report, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _print(report: dict, args) -> None:
    import onnxruntime
    import torch

    title = (f"\nCPU predict, {args.backbone} + LSTM, {args.frames} frames at {args.size} px, batch "
             f"{args.batch_size}; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
             f"{onnxruntime.__version__}")
    print_table(report["rows"], COLS, title, ratio_keys=("speedup",))
    print(f"\nexport: {report['export_s']} s, {report['onnx_mb']} MB, its own check max |dP| "
          f"{report['export_check_max_dp']:.1e}; max |dP| above: vs PyTorch on the same clips / videos, "
          "whose P(FAKE) spans " + ", ".join(f"{r['stage']} {r['p_min']:.3f}-{r['p_max']:.3f}"
                                             for r in report["rows"][::2]))


if __name__ == "__main__":
    sys.exit(main())
