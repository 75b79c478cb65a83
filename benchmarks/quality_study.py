"""Quality study (issue 18): training configurations x seeds on the study set's protocols, one table.

    python -m deepfake_detector make-demo-data --study --out study --per-kind-test 64 --workers 2
    python -m benchmarks.quality_study --data study --work study_work --out quality.md \\
        --configs base,lr1e-3,diff,attention --seeds 0,1,2

By default every run trains with a frozen backbone on its cached per-frame features
(``--freeze-backbone``: the backbone runs once per cache, each epoch then costs only the LSTM and
classifier), so a screening of many configurations fits on a CPU. Augmentation is screened through
augmented feature views (``feature_views``: each training clip's features cached for V augmented
copies). ``--finetune`` trains the whole network instead, augmentations drawn per epoch in pixel space
(what ``train`` does by default; 6-10 minutes a run on a 2-core CPU at 64 px).

``compressed`` differs from ``plain`` only in its test videos, so where ``plain``'s run of the same
configuration and seed exists, its ``best.pt`` is scored on ``compressed``'s test split instead of
training the same model again (the row's ``trained_as``).

Per protocol (``plain``, ``compressed``, ``heldout``: see ``data.synthetic.make_study_set``) the folder
is preprocessed once into ``WORK/cache-PROTOCOL``; each (protocol, configuration, seed) run is recorded
in ``WORK/results.json`` as it finishes, so an interrupted study continues where it stopped. The
markdown table gives the test split's overall ROC-AUC and per-kind AUC (each kind's fakes against all
REAL test videos) as mean +- std over seeds, the number of test videos behind them, and train time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

#: named configurations: overrides of the base recipe; ``model.X`` keys go to ModelConfig
CONFIGS: dict[str, dict[str, Any]] = {
    "base": {},
    "lr1e-3": {"lr": 1e-3},
    "lr5e-5": {"lr": 5e-5},
    "warmup0": {"warmup_epochs": 0.0},
    "diff": {"model.temporal_diff": True},
    "attention": {"model.pooling": "attention"},
    "bidir": {"model.bidirectional": True},
    "diff+attention": {"model.temporal_diff": True, "model.pooling": "attention"},
    # augmentation through augmented feature views (train --feature-views): 4 views of each training clip
    "h264": {"augment": "base+h264", "feature_views": 4},
    "diff+attention+h264": {"model.temporal_diff": True, "model.pooling": "attention",
                            "augment": "base+h264", "feature_views": 4},
    # order pseudo-fakes (train --order-fakes): a quarter of the REAL clips shuffled in time, labelled FAKE
    "diff+attention+h264+order": {"model.temporal_diff": True, "model.pooling": "attention",
                                  "augment": "base+h264", "feature_views": 4, "order_fakes": 0.25},
}
KINDS = ("faceswap", "lowres", "temporal")


def parse_config(spec: str) -> tuple[str, dict[str, Any]]:
    """``base`` (a name in CONFIGS) or ``NAME:key=value,key=value`` (values read as YAML scalars; a list
    value such as ``augment`` is spelt with ``+``: ``augment=base+h264``)."""
    import yaml

    if ":" not in spec:
        if spec not in CONFIGS:
            raise SystemExit(f"error: unknown configuration {spec!r}; known: {', '.join(CONFIGS)} "
                             "(or NAME:key=value,...)")
        return spec, dict(CONFIGS[spec])
    name, body = spec.split(":", 1)
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        overrides[key.strip()] = yaml.safe_load(value)
    return name, overrides


def train_config(cache: Path, runs: Path, name: str, base: dict, overrides: dict, seed: int,
                 finetune: bool = False):
    """The TrainConfig of one run: base recipe, then the configuration's overrides; a frozen backbone on
    its feature cache, or with ``finetune`` the whole network trained (augmentations drawn per epoch in
    pixel space, so feature views do not apply)."""
    from deepfake_detector.config import ModelConfig, TrainConfig

    merged = {**base, **overrides}
    model = {k[6:]: v for k, v in merged.items() if k.startswith("model.")}
    train = {k: v for k, v in merged.items() if not k.startswith("model.")}
    if "augment" in train:
        train["augment"] = str(train["augment"]).replace("+", ",")
    if finetune:
        train.pop("feature_views", None)
    return TrainConfig(cache=str(cache), name=name, runs_dir=str(runs), seed=seed, overwrite=True,
                       tensorboard=False, model=ModelConfig(freeze_backbone=not finetune, **model), **train)


def _test_scores(test: dict) -> dict:
    kinds = test.get("by_manipulation") or {}
    return {
        "auc": test.get("auc"), "n_real": test.get("n_real"), "n_fake": test.get("n_fake"),
        "kinds": {k: {"auc": v.get("auc"), "n": v.get("n_fake", v.get("n"))} for k, v in kinds.items()},
    }


def one_run(cfg) -> dict:
    """Train one configuration; its test split's overall and per-kind AUC, counts and train seconds."""
    from deepfake_detector.engine.trainer import fit

    t0 = time.perf_counter()
    summary = fit(cfg, progress=False)
    seconds = time.perf_counter() - t0
    return {
        **_test_scores(summary.get("test_metrics") or {}), "run_dir": summary.get("run_dir"),
        "seconds": seconds, "epochs": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
    }


def test_only(trained: dict, cache: Path, device: str) -> dict:
    """A trained run's ``best.pt`` on another cache's test split (the compressed protocol's test videos
    with the plain protocol's model: the two share their training and validation videos)."""
    from deepfake_detector.data.cache import Cache
    from deepfake_detector.data.records import normalize_label
    from deepfake_detector.engine.evaluate import evaluate_checkpoint

    # every labelled test video, by its main face's row (as evaluate counts them)
    rows = [r for r in Cache(cache).rows() if r.split == "test" and normalize_label(r.label) and not r.track]
    result = evaluate_checkpoint(Path(trained["run_dir"]) / "best.pt", cache, "test", rows=rows,
                                 device=device, progress=False)
    return {**_test_scores(result.metrics), "seconds": trained["seconds"], "epochs": trained.get("epochs"),
            "best_epoch": trained.get("best_epoch"), "trained_as": trained["key"]}


def run_study(caches: dict[str, Path], configs: list[tuple[str, dict]], seeds: list[int], base: dict,
              work: Path, log=print, finetune: bool = False) -> dict:
    """Every (protocol, configuration, seed) not yet in ``WORK/results.json``; returns all results.

    ``compressed`` differs from ``plain`` only in its test videos, so where ``plain``'s run of the same
    configuration and seed exists its model is tested on ``compressed`` instead of training it again."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for protocol in sorted(caches, key=lambda p: p == "compressed"):  # plain's models first
        cache = caches[protocol]
        for name, overrides in configs:
            for seed in seeds:
                key = f"{protocol}|{name}|{seed}"
                if key in results:
                    continue
                plain = results.get(f"plain|{name}|{seed}") or {}
                if protocol == "compressed" and (Path(plain.get("run_dir") or "-") / "best.pt").is_file():
                    scores = test_only({**plain, "key": f"plain|{name}|{seed}"}, cache, base["device"])
                    results[key] = {"overrides": overrides, **scores}
                else:
                    cfg = train_config(cache, work / "runs", f"{protocol}-{name}-s{seed}".replace("+", "_"),
                                       base, overrides, seed, finetune)
                    results[key] = {"overrides": overrides, **one_run(cfg)}
                log(f"{key}: AUC {results[key]['auc']} in {results[key]['seconds']:.0f}s")
                path.write_text(json.dumps(results, indent=1, sort_keys=True))
    return results


def _mean_std(values: list) -> str:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"


def table(results: dict, protocols: list[str], configs: list[str]) -> str:
    """One markdown table: a row per (protocol, configuration), mean ± std over its seeds."""
    kinds = sorted({k for r in results.values() for k in r.get("kinds", {})}, key=lambda k: (
        KINDS.index(k) if k in KINDS else len(KINDS), k))
    head = ["protocol", "configuration", "seeds", "test REAL/FAKE", "overall AUC"]
    head += [f"{k} AUC (n)" for k in kinds] + ["train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for protocol in protocols:
        for name in configs:
            runs = [r for key, r in results.items() if key.split("|")[:2] == [protocol, name]]
            if not runs:
                continue
            cells = [protocol, name, str(len(runs)), f"{runs[0].get('n_real')}/{runs[0].get('n_fake')}",
                     _mean_std([r["auc"] for r in runs])]
            for k in kinds:
                n = next((r["kinds"][k]["n"] for r in runs if k in r["kinds"]), None)
                cells.append(f"{_mean_std([r['kinds'].get(k, {}).get('auc') for r in runs])} ({n})")
            cells.append(f"{np.mean([r['seconds'] for r in runs]):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def preprocess(data: Path, cache: Path, frames: int, size: int, detector: str, workers: int) -> Path:
    """The protocol folder's face-clip cache (resumable: clips already made are kept)."""
    from deepfake_detector.config import PreprocessConfig
    from deepfake_detector.data.preprocess import run_preprocess
    from deepfake_detector.data.sources import dataset_summary, load_records

    loaded = load_records(data, format="dfdc")
    pcfg = PreprocessConfig(frames=frames, size=size, detector=detector)
    run_preprocess(loaded.records, cache, pcfg, workers=workers, progress=False, dataset_root=data,
                   fmt="dfdc", dataset=dataset_summary(loaded))
    return cache


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="study set folder (make-demo-data --study), or a cache root "
                   "with --caches")
    p.add_argument("--caches", action="store_true", help="--data holds caches named cache-PROTOCOL already")
    p.add_argument("--work", required=True, help="caches, runs and results.json go here")
    p.add_argument("--out", required=True, help="markdown file for the table")
    p.add_argument("--protocols", default="plain,compressed,heldout")
    p.add_argument("--configs", default="base,lr1e-3,diff,attention",
                   help="comma-separated names (" + ", ".join(CONFIGS) + ") or ';'-separated "
                        "NAME:key=value,...")
    p.add_argument("--seeds", default="0")
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--weights-file", default=None, help="backbone weights (default: the demo's MobileNetV2 "
                   "ImageNet weights when they can be had, else random)")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--frames", type=int, default=10, help="frames per clip (preprocess and --seq-len)")
    p.add_argument("--size", type=int, default=96, help="face crop side (preprocess)")
    p.add_argument("--detector", default="auto", help="face detector (default: auto, as preprocess)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--finetune", action="store_true",
                   help="train the whole network, backbone included (6-10 minutes a run on a 2-core CPU at "
                        "64 px), instead of the LSTM head on the frozen backbone's cached features")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-train", action="store_true",
                   help="only write the table of the runs already in WORK/results.json (no preprocess)")
    return p


def _base_recipe(args: argparse.Namespace) -> dict:
    weights = args.weights_file
    if weights is None and args.backbone == "mobilenet_v2":
        from deepfake_detector.demo import resolve_weights

        weights, _ = resolve_weights(True, print)
    return {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": 1e-4,
            "patience": args.patience, "seq_len": args.frames, "device": args.device,
            # a loader worker augments clips (H.264 round trips) beside the training step when fine-tuning
            "workers": min(args.workers, 1) if args.finetune else 0,
            "model.backbone": args.backbone, "model.hidden_size": args.hidden_size,
            # the seed's recipe (head, augmentations): the configurations name what they add, so train's
            # defaults are diff+attention+h264
            "model.temporal_diff": False, "model.pooling": "mean", "augment": "base",
            "model.pretrained": weights is not None, "model.weights_file": weights}


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    data, work = Path(args.data), Path(args.work)
    protocols = [p for p in args.protocols.split(",") if p]
    specs = args.configs.split(";") if ":" in args.configs else args.configs.split(",")
    configs = [parse_config(s.strip()) for s in specs if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    caches = {}
    t0 = time.perf_counter()
    for protocol in [] if args.no_train else protocols:
        caches[protocol] = (data / f"cache-{protocol}" if args.caches else
                            preprocess(data / protocol, work / f"cache-{protocol}", args.frames, args.size,
                                       args.detector, args.workers))
    t_pre = time.perf_counter() - t0
    path = work / "results.json"
    if args.no_train:
        results = json.loads(path.read_text()) if path.is_file() else {}
    else:
        results = run_study(caches, configs, seeds, _base_recipe(args), work, finetune=args.finetune)
    text = (f"Command: `python -m benchmarks.quality_study {shlex.join(argv or sys.argv[1:])}`\n\n"
            f"Preprocess: {t_pre:.0f}s. "
            + (f"`{args.backbone}` fine-tuned end to end" if args.finetune else
               f"Frozen backbone `{args.backbone}`, feature cache")
            + "; test split of "
            "each protocol; per-kind AUC = that kind's fakes vs all REAL test videos.\n\n"
            + table(results, protocols, [n for n, _ in configs]))
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
