"""Training throughput: reference-style setup vs ours, same model, same machine, one run.

reference-style: fp32, NCHW, batch 4 clips of float frames, a plain loop (forward, CE loss, backward,
                 Adam step, the loss read every step).
ours:            ``engine.loop.train_epoch`` (the real training code: non-finite checks, gradient
                 clipping, on-device metric accumulation, one host sync per step) with AMP (bf16 where
                 supported, else fp16 + GradScaler), channels_last, batch 16, uint8 clips normalised on
                 the device (as ``train`` feeds them), optional ``torch.compile``.
floor:           on a GPU with a known peak, the FLOP bound: peak dense bf16 FLOP/s over the training
                 FLOPs of one frame (3x forward, counted by ``torch.utils.flop_counter``).

Inputs are random clips already in (pinned) host memory, so the numbers are model + optimizer
throughput, not data loading. Prints a table (frames/s = clips/s x frames per clip) and, with
``--json``, a JSON line. On a CPU it runs a very short version (fp32 both; AMP and channels_last are
CUDA features) just to show the script works.

    python -m benchmarks.bench_train                       # CUDA if present, else a short CPU run
    python -m benchmarks.bench_train --backbone mobilenet_v2 --size 224 --steps 30 --compile
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn


def make_batches(n: int, batch: int, frames: int, size: int, pin: bool, raw: bool = False) -> list:
    """Random clips in host memory: float [B,T,3,H,W] (reference), or uint8 [B,T,H,W,3] as ``train``'s
    loader yields them (``ClipDataset(raw=True)``; normalised on the device by ``train_epoch``)."""
    out = []
    for i in range(n):
        if raw:
            x = torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8)
        else:
            x = torch.randn(batch, frames, 3, size, size)
        y = torch.randint(0, 2, (batch,))
        idx = torch.arange(i * batch, (i + 1) * batch)
        if pin:
            x, y, idx = x.pin_memory(), y.pin_memory(), idx
        out.append((x, y, idx))
    return out


def build(backbone: str, hidden: int):
    from deepfake_detector.config import ModelConfig
    from deepfake_detector.models import build_model

    torch.manual_seed(0)
    return build_model(
        ModelConfig(backbone=backbone, pretrained=False, hidden_size=hidden), load_weights=False
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_reference(args, device: torch.device, autotune: bool = False) -> dict:
    """fp32, NCHW, batch 4: how the known reference trains (it never enables cuDNN autotuning)."""
    torch.backends.cudnn.benchmark = autotune
    model = build(args.backbone, args.hidden).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-5)
    crit = nn.CrossEntropyLoss()
    batches = make_batches(2, args.ref_batch, args.frames, args.size, device.type == "cuda")

    def step(x, y):
        x, y = x.to(device), y.to(device)
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()  # the reference reads the loss every step

    for i in range(args.warmup):
        step(*batches[i % 2][:2])
    sync(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(*batches[i % 2][:2])
    sync(device)
    dt = time.perf_counter() - t0
    return {
        "setup": "reference-style" + (" +autotune" if autotune else ""),
        "precision": "fp32",
        "layout": "NCHW",
        "batch": args.ref_batch,
        "clips_s": args.steps * args.ref_batch / dt,
        "frames_s": args.steps * args.ref_batch * args.frames / dt,
    }


def bench_ours(args, device: torch.device, channels_last: bool = True, compile_model: bool = False) -> dict:
    """What ``train`` does on this device: the real ``train_epoch`` with the trainer's settings."""
    from deepfake_detector.engine.loop import NonFiniteTracker, train_epoch

    torch.backends.cudnn.benchmark = device.type == "cuda"  # as the trainer sets it
    model = build(args.backbone, args.hidden).to(device)
    amp_dtype, scaler = None, None
    layout = "NCHW"
    if device.type == "cuda":
        if channels_last:
            model.set_channels_last(True)
            layout = "channels_last"
        if torch.cuda.is_bf16_supported():
            amp_dtype = torch.bfloat16
        else:
            amp_dtype, scaler = torch.float16, torch.amp.GradScaler("cuda")
    run_model = torch.compile(model) if compile_model else model
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-5, **fused
    )
    crit = nn.CrossEntropyLoss()
    batches = make_batches(2, args.batch, args.frames, args.size, device.type == "cuda", raw=True)

    def run(n: int) -> None:
        loader = [batches[i % 2] for i in range(n)]
        train_epoch(
            run_model,
            loader,
            opt,
            crit,
            device,
            scaler=scaler,
            amp_dtype=amp_dtype,
            grad_clip=1.0,
            tracker=NonFiniteTracker(1000),
            progress=False,
        )

    run(args.warmup + (3 if compile_model else 0))
    sync(device)
    t0 = time.perf_counter()
    run(args.steps)
    sync(device)
    dt = time.perf_counter() - t0
    prec = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    return {
        "setup": "ours" + (" +compile" if compile_model else ""),
        "precision": prec,
        "layout": layout,
        "batch": args.batch,
        "clips_s": args.steps * args.batch / dt,
        "frames_s": args.steps * args.batch * args.frames / dt,
    }


def loader_rate(frames: int, size: int, n: int = 60) -> float:
    """Clips/s ONE DataLoader worker prepares for ``train`` (length fit + train's default augmentation,
    H.264 round trips included, uint8 out, as ``ClipDataset(raw=True)``), in this process with OpenCV on
    one thread. The clip is smoothed noise: pure noise would make the H.264 encoder unrealistically slow."""
    import cv2
    import numpy as np

    from deepfake_detector.config import TrainConfig
    from deepfake_detector.data.dataset import train_clip

    cv2.setNumThreads(1)
    noise = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    clip = np.stack([cv2.GaussianBlur(f, (0, 0), 2.0) for f in noise])
    t0 = time.perf_counter()
    for i in range(n):
        torch.from_numpy(train_clip(clip, frames, np.random.default_rng(i), TrainConfig.augment))
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnext50_32x4d")
    p.add_argument("--size", type=int, default=112, help="face crop side, pixels")
    p.add_argument("--frames", type=int, default=20, help="frames per clip")
    p.add_argument("--hidden", type=int, default=2048, help="LSTM hidden size")
    p.add_argument("--ref-batch", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="ours: batch size (train's default)")
    p.add_argument("--more-batches", default="", help="comma list: also time ours at these batch sizes")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also torch.compile ours")
    p.add_argument("--json", action="store_true", help="print a JSON line too")
    p.add_argument("--json-out", default=None, help="write the results as JSON to this file")
    p.add_argument("--variants", action="store_true", help="also ours with NCHW instead of channels_last")
    args = p.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if device.type == "cpu":
        args.steps = args.steps or 2
        args.warmup = 1 if args.warmup is None else args.warmup
        if args.frames == 20:
            args.frames = 4  # keep the CPU smoke run short
    else:
        args.steps = args.steps or 30
        args.warmup = 5 if args.warmup is None else args.warmup
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"

    def fresh() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()

    rows = [bench_reference(args, device)]
    fresh()
    rows.append(bench_ours(args, device))
    default_batch = args.batch
    for b in [int(v) for v in args.more_batches.split(",") if v.strip()]:
        fresh()
        args.batch = b
        rows.append(bench_ours(args, device))
    args.batch = default_batch
    if device.type == "cuda" and args.variants:
        fresh()
        rows.append(bench_ours(args, device, channels_last=False))
        fresh()
        rows.append(bench_reference(args, device, autotune=True))
    if args.compile:
        fresh()
        rows.append(bench_ours(args, device, compile_model=True))
    floor = None
    if device.type == "cuda":
        from benchmarks.flops import flop_bound_frames_per_s

        floor = flop_bound_frames_per_s(build(args.backbone, args.hidden), args.size, name, train=True)
        if floor is not None:
            rows.append({"setup": "floor (FLOP bound)", "precision": "bf16", "layout": "-", "batch": 0,
                         "clips_s": floor["frames_s"] / args.frames, "frames_s": floor["frames_s"]})
    ratio = rows[1]["frames_s"] / rows[0]["frames_s"]  # ours as `train` runs it by default
    print(
        f"training throughput: {args.backbone}, {args.size}px, {args.frames} frames/clip, "
        f"LSTM {args.hidden}, {args.steps} timed steps on {name}"
    )
    print(
        f"{'setup':<22}{'precision':<11}{'layout':<15}{'batch':>6}{'clips/s':>10}{'frames/s':>11}{'ratio':>9}"
    )
    for r in rows:
        r["speedup"] = r["frames_s"] / rows[0]["frames_s"]
        print(
            f"{r['setup']:<22}{r['precision']:<11}{r['layout']:<15}{r['batch']:>6}{r['clips_s']:>10.1f}"
            f"{r['frames_s']:>11.0f}{r['speedup']:>8.2f}x"
        )
    print(f"speed-up (frames/s), ours (train's defaults) vs reference-style: {ratio:.2f}x")
    if floor is not None:
        print(f"ours at {rows[1]['frames_s'] / floor['frames_s']:.1%} of the FLOP bound "
              f"({floor['gflops_per_frame']:.2f} GFLOP/frame, {floor['tflops_peak']} TFLOP/s peak)")
    per_worker = loader_rate(args.frames, args.size)
    need = rows[1]["clips_s"] / per_worker
    print(f"data loading: {per_worker:.0f} clips/s per DataLoader worker (augmented, {args.frames} frames at "
          f"{args.size} px); ours needs {need:.1f} workers to stay fed (train's --workers)")
    result = {
        "device": name,
        "backbone": args.backbone,
        "size": args.size,
        "frames": args.frames,
        "rows": rows,
        "speedup": ratio,
        "floor": floor,
        "loader_clips_s_per_worker": per_worker,
        "loader_workers_needed": need,
    }
    if args.json:
        print(json.dumps(result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
