"""Benchmark and check the model side of ``predict`` (CPU or CUDA), without decoding videos.

Decoding is replaced by ready-made clips (``inference._extract`` patched), so this measures what the
device does: ``eval_transform`` + batched forward (CUDA: bf16/fp16 autocast + channels_last), the
Grad-CAM explanation and the legacy exact mode. It also checks that CUDA mixed precision gives the
same verdicts as CPU float32 and that legacy exact mode on the device matches the reference.

    python benchmarks/bench_predict.py --device cuda --backbone resnext50_32x4d --clips 256 --out out.json
    python benchmarks/bench_predict.py --device cpu --backbone tiny --clips 16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepfake_detector import inference
from deepfake_detector import legacy as lg
from deepfake_detector.config import ModelConfig, PreprocessConfig, TrainConfig, to_dict
from deepfake_detector.data.preprocess import ClipResult
from deepfake_detector.inference import Detector
from deepfake_detector.models import build_model
from deepfake_detector.utils import atomic_torch_save


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


def patch_extract(clips: list[np.ndarray]) -> None:
    def fake_extract(path: str, cfg):
        i = int(Path(path).stem.split("_")[1])
        c = clips[i]
        return ClipResult(clip=c, status="ok", frames=len(c), face_ratio=1.0, seconds=0.0,
                          indices=list(range(len(c))))

    inference._extract = fake_extract  # type: ignore[assignment]


def make_checkpoint(path: Path, backbone: str, frames: int, size: int) -> Path:
    torch.manual_seed(0)
    mcfg = ModelConfig(backbone=backbone, pretrained=False, hidden_size=512 if backbone != "tiny" else 16)
    model = build_model(mcfg, load_weights=False)
    with torch.no_grad():
        model.fc.weight.mul_(20)
    pre = PreprocessConfig(frames=frames, size=size, detector="center")
    atomic_torch_save({"model": model.state_dict(), "config": {"train": to_dict(TrainConfig(seq_len=frames)),
                       "model": to_dict(mcfg), "preprocess": to_dict(pre)}, "threshold": 0.5,
                       "metrics": {}, "version": "bench"}, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backbone", default="resnext50_32x4d")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None)
    ap.add_argument("--explain-dir", default=None)
    ap.add_argument("--legacy", action="store_true",
                    help="also check legacy exact mode (ResNeXt-50 reference)")
    args = ap.parse_args(argv)
    report: dict = {"torch": torch.__version__, "device_arg": args.device}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    clips = make_clips(args.clips, args.frames, args.size)
    patch_extract(clips)
    paths = []
    for i in range(args.clips):
        p = tmp / f"clip_{i}.mp4"
        p.write_bytes(b"x")
        paths.append(str(p))
    ckpt = make_checkpoint(tmp / "best.pt", args.backbone, args.frames, args.size)

    det = Detector.from_checkpoint(ckpt, device=args.device, workers=0, batch_size=args.batch_size)
    report["device"] = str(det.device)
    report["amp_dtype"] = str(det.amp_dtype)
    n_check = min(8, args.clips)
    cpu = Detector.from_checkpoint(ckpt, device="cpu", workers=0, batch_size=args.batch_size)
    p_cpu = np.array([p.p_fake for p in cpu.predict(paths[:n_check])])
    p_dev = np.array([p.p_fake for p in det.predict(paths[:n_check])])
    report["max_abs_diff_vs_cpu_fp32"] = float(np.abs(p_cpu - p_dev).max())
    report["label_agreement_vs_cpu"] = float(np.mean((p_cpu >= 0.5) == (p_dev >= 0.5)))
    report["p_cpu_sample"] = [round(float(v), 5) for v in p_cpu[:4]]
    report["p_dev_sample"] = [round(float(v), 5) for v in p_dev[:4]]
    if det.device.type == "cuda":
        fp32 = Detector.from_checkpoint(ckpt, device=args.device, workers=0, amp=False)
        p32 = np.array([p.p_fake for p in fp32.predict(paths[:n_check])])
        report["max_abs_diff_cuda_fp32_vs_cpu"] = float(np.abs(p_cpu - p32).max())
        torch.cuda.reset_peak_memory_stats()
    det.predict(paths[: args.batch_size])  # warm-up (cudnn autotune, allocator)
    if det.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    preds = det.predict(paths)
    if det.device.type == "cuda":
        torch.cuda.synchronize()
        report["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    dt = time.perf_counter() - t0
    report["clips"] = len(preds)
    report["model_stage_clips_per_s"] = round(len(preds) / dt, 2)
    report["model_stage_frames_per_s"] = round(len(preds) * args.frames / dt, 1)
    report["all_ok"] = all(p.status == "ok" and p.p_fake is not None for p in preds)

    ex_dir = Path(args.explain_dir) if args.explain_dir else tmp / "explain"
    t0 = time.perf_counter()
    (ex,) = det.predict(paths[:1], explain_dir=ex_dir)
    report["explain_seconds"] = round(time.perf_counter() - t0, 3)
    report["explain_png"] = ex.explanation

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

        p_ref = []
        with torch.no_grad():
            for c in clips[:4]:
                x = eval_transform(np.ascontiguousarray(c[..., ::-1]), args.frames).unsqueeze(0)
                p_ref.append(float(torch.softmax(ref(x)[1], 1)[0, 0]))
        diff = float(np.abs(np.array(p_leg) - np.array(p_ref)).max())
        report["legacy_exact_max_abs_diff_device_vs_cpu_reference"] = diff
        report["legacy_amp_dtype"] = str(ldet.amp_dtype)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
