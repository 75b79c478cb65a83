"""Model-stage ``predict`` throughput: reference-style vs ours, same weights, same run (CPU or CUDA).

Decoding is replaced by ready-made clips (``inference._extract`` patched), so this measures what the
device does with them. One run prints a table of clips/s and frames/s at ``--size``:

* ``reference-style``: fp32, NCHW, batch 4, ``model(x)`` under ``torch.no_grad()`` on a fresh copy of
  the same weights; each batch is built on the host with ``eval_transform``, copied to the device and
  its result copied back with ``.cpu()`` (no overlap); ``cudnn.benchmark`` off.
* ``ours``: ``Detector.predict`` (on CUDA: bf16/fp16 autocast + channels_last), batch ``--batch-size``.
* ``ours +compile`` (``--compile``): ``Detector.from_checkpoint(..., compile=True)``.

It also checks that CUDA mixed precision gives the same verdicts as CPU float32, times one Grad-CAM
explanation, and (``--legacy``) that legacy exact mode on the device matches the reference. ``--json``
writes everything, with the table as ``rows`` ({setup, precision, layout, batch, clips_s, frames_s,
speedup}) and ``device`` (the GPU's name or ``CPU``).

    python -m benchmarks.bench_predict --device cuda --backbone resnext50_32x4d --clips 256 --size 224 \
        --compile --json out.json
    python -m benchmarks.bench_predict --device cpu --backbone tiny --clips 16
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
import torch

from benchmarks.common import print_table, timed
from deepfake_detector import inference
from deepfake_detector.config import ModelConfig, PreprocessConfig, TrainConfig, from_dict, to_dict
from deepfake_detector.data.preprocess import ClipResult
from deepfake_detector.inference import Detector
from deepfake_detector.models import build_model
from deepfake_detector.models import legacy as lg
from deepfake_detector.utils import atomic_torch_save

REF_BATCH = 4  # the known reference's predict batch


def make_clips(n: int, frames: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth moving textures (not noise: convolutions see structure), one per fake 'video'."""
    import cv2

    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        base = cv2.resize(rng.integers(0, 255, (6, 6, 3)).astype(np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC)
        clip = np.stack([np.roll(base, t, axis=1) + rng.normal(0, 5, base.shape) for t in range(frames)])
        clips.append(np.clip(clip, 0, 255).astype(np.uint8))
    return clips


def patch_extract(clips: list[np.ndarray]):
    """Make ``inference._extract`` return ``clips[i]`` for ``.../clip_i.mp4``; returns the original
    (put it back with ``inference._extract = original``)."""
    original = inference._extract

    def fake_extract(path: str, cfg):
        i = int(Path(path).stem.split("_")[1])
        c = clips[i]
        return ClipResult(clip=c, status="ok", frames=len(c), face_ratio=1.0, seconds=0.0,
                          indices=list(range(len(c))))

    inference._extract = fake_extract  # type: ignore[assignment]
    return original


def make_checkpoint(path: Path, backbone: str, frames: int, size: int, detector: str = "center") -> Path:
    """A checkpoint with random weights (seed 0, FC scaled so probabilities spread) and the configs
    ``Detector.from_checkpoint`` needs."""
    torch.manual_seed(0)
    # the product's model: LSTM hidden size 2048 (ModelConfig's default) except for the tiny test backbone
    hidden = {"hidden_size": 16} if backbone == "tiny" else {}
    mcfg = ModelConfig(backbone=backbone, pretrained=False, **hidden)
    model = build_model(mcfg, load_weights=False)
    with torch.no_grad():
        model.fc.weight.mul_(20)
    pre = PreprocessConfig(frames=frames, size=size, detector=detector)
    atomic_torch_save({"model": model.state_dict(), "config": {"train": to_dict(TrainConfig(seq_len=frames)),
                       "model": to_dict(mcfg), "preprocess": to_dict(pre)}, "threshold": 0.5,
                       "metrics": {}, "version": "bench"}, path)
    return path


def load_plain_model(ckpt: Path, device: torch.device) -> torch.nn.Module:
    """The checkpoint's network as the reference ran it: fp32, NCHW (default layout), eval mode."""
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    mcfg = from_dict(ModelConfig, obj["config"]["model"])
    model = build_model(mcfg, load_weights=False)
    model.load_state_dict(obj["model"])
    return model.to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type.upper()


def precision_name(dtype) -> str:
    return {None: "fp32", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        dtype, str(dtype))


def reference_style_predict(model, clips: list[np.ndarray], seq_len: int, device: torch.device,
                            batch: int = REF_BATCH) -> list[float]:
    """P(FAKE) per clip, the reference's way: per batch, host transform -> copy -> fp32 forward -> .cpu()."""
    from deepfake_detector.data.dataset import eval_transform

    out: list[float] = []
    with torch.no_grad():
        for k in range(0, len(clips), batch):
            x = torch.stack([eval_transform(c, seq_len) for c in clips[k:k + batch]]).to(device)
            p = torch.softmax(model(x), dim=1)[:, 1].cpu()
            out.extend(float(v) for v in p)
    return out


def row(setup: str, precision: str, layout: str, batch: int, clips: int, frames: int, seconds: float,
        **extra) -> dict:
    return {"setup": setup, "precision": precision, "layout": layout, "batch": batch,
            "clips_s": round(clips / seconds, 2), "frames_s": round(clips * frames / seconds, 1),
            "seconds": round(seconds, 4), **extra}


def bench_reference_style(ckpt: Path, clips: list[np.ndarray], frames: int, device: torch.device,
                          repeat: int) -> tuple[dict, list[float]]:
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False  # the reference never turned autotuning on
    try:
        model = load_plain_model(ckpt, device)
        reference_style_predict(model, clips[:REF_BATCH], frames, device)  # warm-up (allocator, kernels)
        if len(clips) % REF_BATCH:
            reference_style_predict(model, clips[:len(clips) % REF_BATCH], frames, device)

        def run():
            p = reference_style_predict(model, clips, frames, device)
            sync(device)
            return p

        dt, probs = timed(run, repeat)
    finally:
        torch.backends.cudnn.benchmark = prev
    return row("reference-style", "fp32", "NCHW", REF_BATCH, len(clips), frames, dt), probs  # type: ignore


def bench_detector(setup: str, det: Detector, paths: list[str], frames: int,
                   repeat: int) -> tuple[dict, list]:
    n, b = len(paths), det.batch_size
    det.predict(paths[:b])  # warm-up (cudnn autotune, allocator, compilation) for both batch shapes
    if n % b and n > b:
        det.predict(paths[:n % b])
    sync(det.device)

    def run():
        preds = det.predict(paths)
        sync(det.device)
        return preds

    dt, preds = timed(run, repeat)
    layout = "NHWC" if getattr(det.model, "channels_last", False) else "NCHW"
    return row(setup, precision_name(det.amp_dtype), layout, b, n, frames, dt), preds  # type: ignore


PREDICT_COLS = [("setup", "<16", "setup", ""), ("precision", "<9", "precision", ""),
                ("layout", "<6", "layout", ""), ("batch", ">5", "batch", "d"),
                ("clips/s", ">9", "clips_s", ".2f"), ("frames/s", ">10", "frames_s", ".1f"),
                ("vs ref", ">7", "speedup", ".2f")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbone", default="resnext50_32x4d")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16, help="ours (reference-style is always 4)")
    ap.add_argument("--repeat", type=int, default=1, help="timed passes per setup (median)")
    ap.add_argument("--compile", action="store_true", help="add the 'ours +compile' row (torch.compile)")
    ap.add_argument("--json", "--out", dest="json", default=None, help="write the report as JSON here")
    ap.add_argument("--explain-dir", default=None)
    ap.add_argument("--legacy", action="store_true",
                    help="also check legacy exact mode (ResNeXt-50 reference)")
    args = ap.parse_args(argv)
    report: dict = {"torch": torch.__version__, "device_arg": args.device, "backbone": args.backbone,
                    "size": args.size, "frames": args.frames}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    clips = make_clips(args.clips, args.frames, args.size)
    original_extract = patch_extract(clips)
    try:
        _bench(args, report, tmp, clips)
    finally:
        inference._extract = original_extract  # type: ignore[assignment]
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    title = (f"\nmodel-stage predict, {args.backbone}, {args.clips} clips x {args.frames} frames at "
             f"{args.size}x{args.size}, {report['device']}")
    print_table(report["rows"], PREDICT_COLS, title, ratio_keys=("speedup",))
    for note in report.get("notes", []):
        print(f"note: {note}")
    return 0


def _bench(args, report: dict, tmp: Path, clips: list[np.ndarray]) -> None:
    paths = []
    for i in range(args.clips):
        p = tmp / f"clip_{i}.mp4"
        p.write_bytes(b"x")
        paths.append(str(p))
    ckpt = make_checkpoint(tmp / "best.pt", args.backbone, args.frames, args.size)

    det = Detector.from_checkpoint(ckpt, device=args.device, workers=0, batch_size=args.batch_size)
    report["torch_device"] = str(det.device)
    report["device"] = device_name(det.device)
    report["amp_dtype"] = str(det.amp_dtype)
    n_check = min(8, args.clips)
    cpu = Detector.from_checkpoint(ckpt, device="cpu", workers=0, batch_size=args.batch_size)
    p_cpu = np.array([p.p_fake for p in cpu.predict(paths[:n_check])])
    p_dev = np.array([p.p_fake for p in det.predict(paths[:n_check])])
    del cpu
    report["max_abs_diff_vs_cpu_fp32"] = float(np.abs(p_cpu - p_dev).max())
    report["label_agreement_vs_cpu"] = float(np.mean((p_cpu >= 0.5) == (p_dev >= 0.5)))
    report["p_cpu_sample"] = [round(float(v), 5) for v in p_cpu[:4]]
    report["p_dev_sample"] = [round(float(v), 5) for v in p_dev[:4]]
    if det.device.type == "cuda":
        fp32 = Detector.from_checkpoint(ckpt, device=args.device, workers=0, amp=False)
        p32 = np.array([p.p_fake for p in fp32.predict(paths[:n_check])])
        report["max_abs_diff_cuda_fp32_vs_cpu"] = float(np.abs(p_cpu - p32).max())
        del fp32
        torch.cuda.empty_cache()

    # ---- throughput table: reference-style, ours, ours +compile ------------------------------------
    rows: list[dict] = []
    notes: list[str] = []
    ref_row, p_ref = bench_reference_style(ckpt, clips, args.frames, det.device, args.repeat)
    rows.append(ref_row)
    if det.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ours_row, preds = bench_detector("ours", det, paths, args.frames, args.repeat)
    if det.device.type == "cuda":
        ours_row["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        report["peak_gpu_mem_mib"] = ours_row["peak_gpu_mem_mib"]
    rows.append(ours_row)
    p_ours = np.array([p.p_fake if p.p_fake is not None else np.nan for p in preds])
    report["max_abs_diff_ours_vs_reference_style"] = float(np.nanmax(np.abs(p_ours - np.array(p_ref))))
    report["clips"] = len(preds)
    report["model_stage_clips_per_s"] = ours_row["clips_s"]
    report["model_stage_frames_per_s"] = ours_row["frames_s"]
    report["all_ok"] = all(p.status == "ok" and p.p_fake is not None for p in preds)
    if args.compile:
        cdet = Detector.from_checkpoint(ckpt, device=args.device, workers=0, batch_size=args.batch_size,
                                        compile=True)
        t0 = time.perf_counter()
        crow, cpreds = bench_detector("ours +compile", cdet, paths, args.frames, args.repeat)
        crow["warmup_and_timed_s"] = round(time.perf_counter() - t0, 1)
        crow["compiled"] = cdet.compiled
        if not crow["compiled"]:
            notes.append("'ours +compile': torch.compile fell back to eager (see the log)")
        pc = np.array([p.p_fake if p.p_fake is not None else np.nan for p in cpreds])
        report["max_abs_diff_compile_vs_ours"] = float(np.nanmax(np.abs(pc - p_ours)))
        rows.append(crow)
        del cdet
    if det.device.type == "cuda":
        from benchmarks.flops import flop_bound_frames_per_s

        cpu_model = load_plain_model(ckpt, torch.device("cpu"))  # FLOPs are counted on a CPU copy
        floor = flop_bound_frames_per_s(cpu_model, args.size, report["device"], train=False)
        if floor is not None:
            rows.append({"setup": "floor (FLOP bound)", "precision": "bf16", "layout": "-", "batch": 0,
                         "clips_s": floor["frames_s"] / args.frames, "frames_s": floor["frames_s"],
                         "gflops_per_frame": floor["gflops_per_frame"], "tflops_peak": floor["tflops_peak"]})
    base = rows[0]["clips_s"]
    for r in rows:
        r["speedup"] = round(r["clips_s"] / base, 3) if base else None
    report["rows"] = rows
    if notes:
        report["notes"] = notes

    ex_dir = Path(args.explain_dir) if args.explain_dir else tmp / "explain"
    t0 = time.perf_counter()
    (ex,) = det.predict(paths[:1], explain_dir=ex_dir)
    report["explain_seconds"] = round(time.perf_counter() - t0, 3)
    report["explain_png"] = ex.explanation if args.explain_dir else bool(ex.explanation)

    if args.legacy:
        torch.manual_seed(1)
        ref = lg.reference_model_class()(2).eval()  # ResNeXt-50 trunk, hidden 2048, no LSTM bias
        with torch.no_grad():
            ref.linear1.weight.mul_(20)
        lpath = tmp / f"model_90_acc_{args.frames}_frames.pt"
        torch.save(ref.state_dict(), lpath)
        ldet = Detector.from_checkpoint(lpath, device=args.device, workers=0, legacy=True,
                                        legacy_mode="exact")
        p_leg = [p.p_fake for p in ldet.predict(paths[:4])]
        from deepfake_detector.data.dataset import eval_transform

        p_lref = []
        with torch.no_grad():
            for c in clips[:4]:
                x = eval_transform(np.ascontiguousarray(c[..., ::-1]), args.frames).unsqueeze(0)
                p_lref.append(float(torch.softmax(ref(x)[1], 1)[0, 0]))
        diff = float(np.abs(np.array(p_leg) - np.array(p_lref)).max())
        report["legacy_exact_max_abs_diff_device_vs_cpu_reference"] = diff
        report["legacy_amp_dtype"] = str(ldet.amp_dtype)


if __name__ == "__main__":
    sys.exit(main())
