"""Run every stage's benchmark on data it generates and print ONE table (and write it as JSON).

    python -m benchmarks.run_all [--quick] [--out DIR]      # run everything, then summarise
    python -m benchmarks.run_all --summarize DIR            # only print the table of JSON files in DIR

Each stage is timed next to a reference-style implementation measured in the same run and next to
its floor (see each script's docstring):

* preprocess (``bench_preprocess.py``): videos/s on 30 s 720p clips with a real face; reference =
  cv2 decode + colour conversion of the first 150 frames with detection on each; floor = decode-only.
* train (``bench_train.py``): clips/s and frames/s of model + optimizer; reference = fp32 NCHW batch 4;
  floor = the GPU's FLOP bound (a GPU with a known peak only).
* predict, end to end (``bench_predict_e2e.py``): videos/s on 10 s 720p clips; reference = sequential
  first-N decode + conversion + detection on every frame, fp32 NCHW batch 4, no overlap; floor =
  decode-only time of the frames ours decodes.
* predict, model stage (``bench_predict.py``): frames/s without decoding; reference = fp32 NCHW batch 4;
  at 112 px (and 224 px on a GPU).
* faces (``bench_faces.py``): frames/s of each face detector over rotated, dark, turned, small, two-person
  and faceless frames; reference = dlib HOG (today's default); the note gives its lowest recall.
* cluster (``bench_cluster.py``): preprocess videos/s with ``--engine ray`` at equal CPUs; reference = the
  local process pool with as many workers (``x ref`` below 1 is Ray's overhead); skipped without Ray.
* serve (``bench_serve.py``): requests/s of the real ``serve`` command under 1, 4 and 16 concurrent
  uploads at ``--workers`` 1 and 2 (the note: p50/p95/p99 latency, error rate); the batching-window
  rows' reference is the same setting with the window off.

Every script runs in its own process (fresh CUDA state, no allocator carry-over). The table's ratio
columns: ``x ref`` = ours / reference-style throughput (higher is better) and ``x floor`` = floor /
ours throughput, i.e. how many times the floor's time ours takes (1.0 is the limit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]  # the stage modules run as ``python -m benchmarks.X`` from here


def _load(path: Path):
    """The JSON in ``path``; None when absent, with a line on stderr when it is there but unreadable."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"skipped {path.name}: not readable JSON ({exc})", file=sys.stderr)
        return None


def _each(out: Path, pattern: str):
    """The loaded, non-empty JSON files of ``out`` matching ``pattern``, in name order."""
    for path in sorted(out.glob(pattern)):
        data = _load(path)
        if data:
            yield data


def _row(stage: str, unit: str, ref: Optional[float], ours: Optional[float], floor: Optional[float],
         note: str = "") -> dict:
    return {
        "stage": stage, "unit": unit, "reference": ref, "ours": ours, "floor": floor,
        "x_ref": ours / ref if ours and ref else None,
        "x_floor": floor / ours if ours and floor else None,
        "note": note,
    }


def _by_setup(rows: list, prefix: str) -> Optional[dict]:
    for r in rows:
        if str(r.get("setup", "")).startswith(prefix):
            return r
    return None


def collect(out: Path) -> dict:
    """One summary (rows + device) from the JSON files the stage scripts wrote into ``out``."""
    table: list[dict] = []
    device = None
    pre = _load(out / "preprocess.json")
    for v in pre or []:
        table.append(_row(f"preprocess {v['video']} ({v['size']}, {v['frames']} fr)", "videos/s",
                          1 / v["ref_s"], 1 / v["ours_s"], 1 / v["floor_s"],
                          f"floor = decode-only ({v.get('floor_how', '')})"))
    for tr in _each(out, "train*.json"):
        device = device or tr.get("device")
        rows = tr["rows"]
        ref, ours = rows[0], rows[1]
        floor = tr.get("floor") or {}
        stage = f"train {tr['backbone']} {tr['size']}px x{tr['frames']}"
        table.append(_row(stage, "frames/s", ref["frames_s"], ours["frames_s"], floor.get("frames_s"),
                          f"{ours['precision']} {ours['layout']} b{ours['batch']}; "
                          f"clips/s {ref['clips_s']:.1f} -> {ours['clips_s']:.1f}"))
        for extra in rows[2:]:
            if extra["setup"].startswith("floor"):
                continue
            table.append(_row(f"  {extra['setup']} b{extra['batch']} {extra['layout']}", "frames/s",
                              ref["frames_s"], extra["frames_s"], floor.get("frames_s"), extra["precision"]))
    for e2e in _each(out, "predict_e2e*.json"):
        device = device or e2e.get("device")
        rows = e2e["rows"]
        ref, ours, floor = _by_setup(rows, "reference"), _by_setup(rows, "ours"), _by_setup(rows, "floor")
        note = f"{e2e.get('backbone', '')}, {e2e.get('videos', '?')} videos"
        if e2e.get("one_video_s") is not None:
            note += f"; one video end to end {e2e['one_video_s']:.2f} s"
        table.append(_row("predict end to end (10 s 720p)", "videos/s", ref and ref["videos_s"],
                          ours and ours["videos_s"], floor and floor["videos_s"], note))
    for fc in _each(out, "faces*.json"):
        table.extend(_face_rows(fc))
    table.extend(_cluster_rows(_load(out / "cluster.json")))
    table.extend(_serve_rows(_load(out / "serve.json")))
    for pm in _each(out, "predict_model*.json"):
        device = device or pm.get("device")
        rows = pm["rows"]
        ref, fl = _by_setup(rows, "reference"), _by_setup(rows, "floor")
        size = pm.get("size", "?")
        for r in rows:
            if r is ref or str(r.get("setup", "")).startswith("floor"):
                continue
            table.append(_row(f"predict model {pm.get('backbone', '')} {size}px: {r['setup']}", "frames/s",
                              ref and ref["frames_s"], r["frames_s"], fl and fl["frames_s"],
                              f"{r.get('precision', '')} {r.get('layout', '')} b{r.get('batch', '')}"))
    return {"device": device or "CPU", "rows": table}


def _cluster_rows(report: Optional[dict]) -> list[dict]:
    """``bench_cluster`` JSON: per worker count, Ray's videos/s next to the local pool's (whole run; the
    note gives the steady rates, after start-up); one row saying why when it was skipped."""
    if not report:
        return []
    if report.get("skipped") or report.get("ray_skipped"):
        return [_row("cluster preprocess --engine ray", "videos/s", None, None, None,
                     f"skipped: {report.get('skipped') or report.get('ray_skipped')}")]
    rows = report.get("rows") or []
    local = {r["workers"]: r for r in rows if r["engine"] == "local"}
    out = []
    for r in rows:
        ref = local.get(r["workers"])
        if r["engine"] != "ray" or not ref:
            continue
        steady = f"{ref.get('steady_videos_s') or 0:.3g} -> {r.get('steady_videos_s') or 0:.3g}"
        note = (f"steady {steady} videos/s; "
                f"{report.get('videos', '?')} x {report.get('seconds', '?')} s 720p")
        out.append(_row(f"cluster preprocess ray vs local, {r['workers']} worker(s)", "videos/s",
                        ref["videos_s"], r["videos_s"], None, note))
    return out


def _face_rows(report: dict) -> list[dict]:
    """``bench_faces`` JSON: one row per detector, frames/s next to dlib HOG's; the note is its recall."""
    summary = report.get("summary") or {}
    ref = (summary.get("dlib") or {}).get("frames_s")
    rows = []
    for name, s in summary.items():
        fp = s.get("faceless_fp_per_frame")
        note = (f"min recall {100 * s['min_recall']:.0f} % ({s['min_recall_condition']})"
                + (f", {fp:.2f} false positives per faceless frame" if fp is not None else ""))
        rows.append(_row(f"faces {name} ({report.get('frames_per_condition', '?')} fr x "
                         f"{len(report.get('conditions', []))} conditions)", "frames/s", ref, s["frames_s"],
                         None, note))
    return rows


def _serve_rows(report: Optional[dict]) -> list[dict]:
    """``bench_serve`` JSON: requests/s per (workers, batching window, clients); a row with the window on
    has the same setting without it as its reference; the note gives the latency percentiles."""
    if not report:
        return []
    rows = report.get("rows") or []
    off = {(r["workers"], r["concurrency"]): r for r in rows if not r.get("batch_window_ms")}
    out = []
    for r in rows:
        window = r.get("batch_window_ms") or 0
        ref = off.get((r["workers"], r["concurrency"])) if window else None
        stage = (f"serve {report.get('model', '')} --workers {r['workers']}, {r['concurrency']} client(s)"
                 + (f", batch window {window:g} ms" if window else ""))
        lat = "/".join("-" if r.get(k) is None else f"{r[k]:.2f}" for k in ("p50_s", "p95_s", "p99_s"))
        note = f"p50/p95/p99 {lat} s, errors {r.get('error_pct', 0):g} %"
        out.append(_row(stage, "req/s", ref and ref["rps"], r["rps"], None, note))
    return out


def _fmt(v: Optional[float], ratio: bool = False) -> str:
    if v is None:
        return "-"
    if ratio:
        return f"{v:.2f}x"
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def print_table(summary: dict) -> None:
    rows = summary["rows"]
    w = max([len(r["stage"]) for r in rows] + [5])
    print(f"\nperformance summary on {summary['device']}  (x ref: ours/reference-style throughput; "
          "x floor: floor/ours)")
    hdr = (f"{'stage':<{w}}  {'unit':<9}{'reference':>11}{'ours':>11}{'floor':>11}{'x ref':>8}"
           f"{'x floor':>9}  note")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['stage']:<{w}}  {r['unit']:<9}{_fmt(r['reference']):>11}{_fmt(r['ours']):>11}"
              f"{_fmt(r['floor']):>11}{_fmt(r['x_ref'], True):>8}{_fmt(r['x_floor'], True):>9}  {r['note']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="short runs: one repeat, long-GOP clip only, small predict runs")
    ap.add_argument("--out", default=None, help="folder for the stage JSON files and summary.json")
    ap.add_argument("--summarize", default=None, metavar="DIR", help="only summarise the JSON files in DIR")
    ap.add_argument("--stages", default="preprocess,train,predict,faces,cluster,serve",
                    help="comma list of preprocess, train, predict, faces, cluster, serve")
    args = ap.parse_args(argv)
    if args.summarize:
        out = Path(args.summarize)
        if not out.is_dir():
            print(f"error: {out} is not a folder of benchmark JSON files", file=sys.stderr)
            return 2
        try:
            summary = collect(out)
        except (KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
            print(f"error: a JSON file in {out} does not have the benchmark scripts' layout ({exc!r})",
                  file=sys.stderr)
            return 2
        if not summary["rows"]:
            print(f"error: no benchmark results in {out} (expected preprocess.json, train*.json, "
                  "predict_e2e*.json, predict_model*.json, faces*.json, cluster.json or serve.json)",
                  file=sys.stderr)
            return 1
        print_table(summary)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    # absolute: the stage modules run with the repository root as their working folder
    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="bench_all_"))
    out.mkdir(parents=True, exist_ok=True)
    stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    q = args.quick
    runs = []
    if "preprocess" in stages:
        runs.append(("preprocess", ["-m", "benchmarks.bench_preprocess", "--repeat", "1" if q else "3",
                                    "--json", out / "preprocess.json"]
                     + (["--videos", "long-gop"] if q else [])))
    if "train" in stages:
        runs.append(("train", ["-m", "benchmarks.bench_train", "--json-out", out / "train.json"]
                     + (["--backbone", "mobilenet_v2", "--hidden", "256"] if q else [])))
    if "predict" in stages:
        runs.append(("predict end to end", ["-m", "benchmarks.bench_predict_e2e", "--json",
                                            out / "predict_e2e.json"] + (["--videos", "2"] if q else [])))
        runs.append(("predict model stage", ["-m", "benchmarks.bench_predict", "--json",
                                             out / "predict_model_112.json"]
                     + (["--backbone", "tiny", "--clips", "16"] if q else [])))
    if "faces" in stages:
        runs.append(("faces", ["-m", "benchmarks.bench_faces", "--json", out / "faces.json"]
                     + (["--frames", "8", "--videos", "2", "--video-seconds", "3"] if q else [])))
    if "cluster" in stages:
        runs.append(("cluster (ray vs local)", ["-m", "benchmarks.bench_cluster", "--json",
                                                out / "cluster.json"]
                     + (["--videos", "8", "--seconds", "5"] if q else [])))
    if "serve" in stages:
        runs.append(("serve (load)", ["-m", "benchmarks.bench_serve", "--json", out / "serve.json"]
                     + (["--model", "tiny", "--seconds", "2", "--width", "320", "--height", "240",
                         "--requests", "8"] if q else ["--batch-window-ms", "0,10"])))
    failed = []
    for name, cmd in runs:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, *map(str, cmd)], cwd=ROOT)
        print(f"({name}: {time.perf_counter() - t0:.0f} s, exit {rc})", flush=True)
        if rc:
            failed.append(name)
    summary = collect(out)
    summary["failed"] = failed
    print_table(summary)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nJSON: {out / 'summary.json'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
