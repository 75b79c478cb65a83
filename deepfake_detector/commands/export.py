"""``deepfake-detector export CHECKPOINT --format onnx --out model.onnx``: a self-describing ONNX file."""

from __future__ import annotations

import argparse

HELP = "export a checkpoint to ONNX (run it with ONNX Runtime: predict/serve accept the .onnx file)"
DESCRIPTION = (
    "Write CHECKPOINT as an ONNX file whose metadata holds everything predict needs besides the weights "
    "(frames, crop size and the whole preprocess config, threshold, labels, normalisation, model config, "
    "calibration, package version, the checkpoint's sha256). 'predict' and 'serve' accept the file in place "
    "of the checkpoint and run it with ONNX Runtime. The export is checked before it is kept: ONNX Runtime "
    "and PyTorch must agree within max |dP(FAKE)| 1e-3 on random clips. Needs: pip install "
    "'deepfake-detector[onnx]'."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a best.pt / last.pt written by 'train' (or a legacy state dict)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format")
    p.add_argument("-o", "--out", required=True, help="the file to write (e.g. model.onnx)")
    p.add_argument("--legacy", action="store_true",
                   help="the checkpoint is a reference-implementation state dict (exported in 'fixed' mode)")
    p.add_argument("--legacy-mode", choices=["fixed", "exact"], default="fixed",
                   help="legacy: only 'fixed' can be exported (see docs/legacy.md)")
    p.add_argument("--legacy-frames", type=int, default=None,
                   help="legacy: frames per video it was trained with (default: from the file name, else 20)")
    p.add_argument("--legacy-preprocess", choices=["reference", "ours"], default=None,
                   help="legacy: whose preprocessing predict repeats (default: ours)")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..export import export_onnx

    if not args.out.lower().endswith(".onnx"):
        raise UserError(f"--out must end in .onnx, got {args.out}")
    if args.legacy_frames is not None and args.legacy_frames < 1:
        raise UserError("--legacy-frames must be >= 1")
    result = export_onnx(args.checkpoint, args.out, legacy=True if args.legacy else None,
                         legacy_mode=args.legacy_mode, legacy_frames=args.legacy_frames,
                         legacy_preprocess=args.legacy_preprocess)
    frames = "dynamic" if result.dynamic_frames else result.metadata.get("seq_len")
    print(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB; batch dynamic, frames {frames}) in "
          f"{result.seconds:.1f} s; ONNX Runtime vs PyTorch on random clips: max |dP(FAKE)| "
          f"{result.max_dp:.1e} (limit 1e-3)")
    print(f"run it: deepfake-detector predict {result.path} VIDEO...")
    return 0
