"""Ray engine overhead: ``preprocess --engine ray`` vs the local process pool at equal CPUs, 1 and 2 workers.

Generates (in a temp dir, or --workdir) a few 720p H.264 clips with a real face (``bench_preprocess``'s
``make_clip``) and lists each of them several times under different names, so every run preprocesses
``--videos`` videos. Then, with fresh cache folders each time:

* ``local`` W: ``run_preprocess(workers=W)``, this machine's process pool;
* ``ray`` W: the same records through ``RayEngine`` with W actors, on a Ray instance of W CPUs that is
  already up (as on a cluster, where Ray runs before the job); its start-up time is reported apart.

Per run: wall time, videos/s over the whole run, and the steady rate (videos/s between the first and the
last finished video: what remains once workers or actors are up, i.e. what a long run sees). The
overhead of Ray at equal CPUs is ``1 - ray/local`` of each rate. The Ray instance runs in a network
namespace of its own (loopback only; ``benchmarks.netns``), which needs root; elsewhere pass
``--host-network`` to run it on this machine's network. Without Ray the script says so and exits 0.

    python -m benchmarks.bench_cluster [--videos 16] [--seconds 10] [--workers 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from benchmarks.common import print_table, work_dir


def _clips(work: Path, seconds: float, distinct: int) -> list[Path]:
    from benchmarks.bench_preprocess import make_clip

    out = []
    for k in range(distinct):
        path = work / f"src{k}_{int(seconds)}s_720p_g{30 + 30 * k}.mp4"
        if not path.exists():
            t0 = time.perf_counter()
            make_clip(path, gop=30 + 30 * k, seconds=seconds)
            print(f"generated {path.name} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        out.append(path)
    return out


def _records(work: Path, clips: list[Path], n: int) -> list:
    from deepfake_detector.data.records import VideoRecord

    data = work / "data"
    data.mkdir(exist_ok=True)
    recs = []
    for i in range(n):
        link = data / f"v{i:04d}.mp4"
        if not link.exists():
            os.symlink(clips[i % len(clips)], link)
        recs.append(VideoRecord(path=str(link), label="REAL", rel_path=link.name))
    return recs


def _timed_run(recs: list, out: Path, cfg, workers: int, engine=None) -> dict:
    """One run; the time of every finished video is taken where the manifest receives it."""
    from deepfake_detector.data import preprocess as pp

    shutil.rmtree(out, ignore_errors=True)
    stamps: list[float] = []
    real_add = pp._RowSink.add

    def add(self, row):  # noqa: ANN001
        stamps.append(time.perf_counter())
        return real_add(self, row)

    pp._RowSink.add = add
    try:
        t0 = time.perf_counter()
        summary = pp.run_preprocess(recs, out, cfg, workers=workers, progress=False, engine=engine)
        wall = time.perf_counter() - t0
    finally:
        pp._RowSink.add = real_add
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    steady = (len(stamps) - 1) / span if span > 0 else None
    return {"wall_s": wall, "videos_s": len(recs) / wall, "steady_videos_s": steady,
            "first_s": stamps[0] - t0 if stamps else None, "ok": summary.counts.get("ok", 0)}


@contextlib.contextmanager
def _isolated(host_network: bool):
    """A private loopback-only network namespace for Ray (or this machine's network when allowed)."""
    from benchmarks.netns import NamespaceUnavailable, private_network

    try:
        with private_network():
            yield "private network namespace (loopback only)"
    except NamespaceUnavailable as exc:
        if not host_network:
            raise
        print(f"note: {exc}; Ray runs on this machine's network", file=sys.stderr)
        yield "host network"


def _ray_runs(recs: list, work: Path, cfg, counts: list[int], host_network: bool) -> tuple[list, dict]:
    import ray

    from deepfake_detector.cluster.preprocess import RayEngine
    from deepfake_detector.cluster.runtime import RayOptions

    rows, meta = [], {}
    with _isolated(host_network) as where:
        meta["network"] = where
        for w in counts:
            t0 = time.perf_counter()
            ray.init(num_cpus=w, include_dashboard=False, configure_logging=False, log_to_driver=False)
            meta[f"ray_init_s_{w}"] = time.perf_counter() - t0
            try:
                _timed_run(recs[: 2 * w], work / "warm", cfg, w, RayEngine(RayOptions(workers=w)))  # imports
                r = _timed_run(recs, work / f"ray{w}", cfg, w, RayEngine(RayOptions(workers=w)))
            finally:
                ray.shutdown()
            rows.append({"engine": "ray", "workers": w, **r})
            print(f"ray   {w} worker(s): {r['wall_s']:.1f} s", file=sys.stderr)
    return rows, meta


def run(args: argparse.Namespace, work: Path) -> dict:
    from deepfake_detector.config import PreprocessConfig

    counts = [int(w) for w in args.workers.split(",")]
    recs = _records(work, _clips(work, args.seconds, args.distinct), args.videos)
    cfg = PreprocessConfig(frames=args.frames, size=112)
    rows = []
    for w in counts:
        _timed_run(recs[: 2 * w], work / "warm", cfg, w)  # page cache, imports, detector files
        r = _timed_run(recs, work / f"local{w}", cfg, w)
        rows.append({"engine": "local", "workers": w, **r})
        print(f"local {w} worker(s): {r['wall_s']:.1f} s", file=sys.stderr)
    report: dict = {"videos": args.videos, "seconds": args.seconds, "cpus": os.cpu_count(), "rows": rows}
    try:
        ray_rows, meta = _ray_runs(recs, work, cfg, counts, args.host_network)
    except Exception as exc:  # no namespace and no --host-network: the local rows stand
        report["ray_skipped"] = str(exc)
        return report
    rows.extend(ray_rows)
    report.update(meta)
    return report


def _ratios(report: dict) -> None:
    """Overhead of Ray at equal workers, and each engine's 2-vs-1 scaling, into the report."""
    by = {(r["engine"], r["workers"]): r for r in report["rows"]}
    for r in report["rows"]:
        local = by.get(("local", r["workers"]))
        if r["engine"] == "ray" and local:
            r["vs_local"] = r["videos_s"] / local["videos_s"]
            if r["steady_videos_s"] and local["steady_videos_s"]:
                r["steady_vs_local"] = r["steady_videos_s"] / local["steady_videos_s"]
        one = by.get((r["engine"], 1))
        if one and r["workers"] > 1:
            r["vs_1_worker"] = r["videos_s"] / one["videos_s"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=16, help="videos per run")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each generated clip")
    ap.add_argument("--distinct", type=int, default=4, help="distinct clips generated (listed repeatedly)")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--workers", default="1,2", help="comma list of worker counts (local processes = actors)")
    ap.add_argument("--host-network", action="store_true",
                    help="run Ray on this machine's network where a private namespace cannot be made")
    ap.add_argument("--workdir", default=None, help="keep/reuse the generated clips here")
    ap.add_argument("--json", default=None, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        report = {"skipped": "Ray is not installed: pip install 'deepfake-detector[cluster]'"}
        print(f"skipped: {report['skipped']}")
    else:
        with work_dir(args.workdir, "bench_cluster_") as work:
            report = run(args, work)
        _ratios(report)
        cols = [("engine", "<6", "engine", ""), ("workers", ">7", "workers", "d"),
                ("wall s", ">7", "wall_s", ".1f"), ("videos/s", ">9", "videos_s", ".3f"),
                ("steady", ">7", "steady_videos_s", ".3f"),
                ("1st s", ">6", "first_s", ".1f"), ("vs local", ">9", "vs_local", ".2f"),
                ("steady vs", ">10", "steady_vs_local", ".2f"), ("vs 1 w", ">7", "vs_1_worker", ".2f")]
        print_table(report["rows"], cols, title=f"preprocess, {args.videos} x {args.seconds:g} s 720p videos",
                    ratio_keys=("vs_local", "steady_vs_local", "vs_1_worker"))
        if report.get("ray_skipped"):
            print(f"ray rows skipped: {report['ray_skipped']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
