"""Golden run: a tiny seeded training run, evaluate and predict whose numbers must not move.

It pins behaviour through restructurings of the engine, the checkpoint format, the cache and the
inference path: the final weights (per-tensor sums), every metric of every epoch, the chosen threshold,
the evaluation metrics and the P(FAKE) of a predicted video are compared with
``tests/golden/golden_run.json``. Text, labels and counts must match exactly; floats must match to
``_RTOL`` relative. Not bit for bit across machines: the same torch wheel picks other SIMD kernels on
another CPU and sums in another order (the 8th significant digit of a loss moved between two Xeons),
while any change of behaviour moves these numbers by far more. Bit-exact repeatability on one machine
is pinned by the resume tests, which compare an interrupted and an uninterrupted run tensor for tensor.
A deliberate change of behaviour regenerates the file with ``DFD_UPDATE_GOLDEN=1 pytest
tests/test_golden.py`` and says why in its commit.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfake_detector.cli import main as cli_main
from deepfake_detector.config import ModelConfig, TrainConfig
from deepfake_detector.engine.trainer import fit
from deepfake_detector.inference import Detector
from tests.cache_helpers import make_synthetic_cache
from tests.helpers import make_video

GOLDEN = Path(__file__).parent / "golden" / "golden_run.json"
# numbers that depend on the clock or on where the test runs, not on the computation
_VOLATILE = {"seconds", "checkpoint", "cache"}
# float rounding from another CPU's kernels drifts ~1e-8 relative over the 3 epochs; behaviour changes move
# these numbers by 1e-3 and more
_RTOL, _ATOL = 1e-5, 1e-7


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if k not in _VOLATILE} for row in csv.DictReader(fh)]


def _exact(obj):
    """Floats as ``repr`` strings (bit-exact comparison through JSON), volatile keys dropped."""
    if isinstance(obj, dict):
        return {str(k): _exact(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))
                if k not in _VOLATILE}
    if isinstance(obj, (list, tuple)):
        return [_exact(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return repr(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return _exact(obj.tolist())
    return obj


def _weight_sums(state: dict) -> dict:
    """Per tensor: sum and sum of absolute values in float64, a fingerprint that tolerates rounding."""
    out = {}
    for name in sorted(state):
        t = state[name].detach().cpu().double()
        out[name] = [float(t.sum()), float(t.abs().sum())]
    return out


def _as_float(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _close(got, want, where: str = "") -> list[str]:
    """Where ``got`` differs from ``want``: structure, text and integers exactly, floats to ``_RTOL``."""
    if isinstance(want, dict) and isinstance(got, dict):
        diffs = [f"{where}: keys {sorted(set(got) ^ set(want))}"] if set(got) != set(want) else []
        for key in sorted(set(got) & set(want)):
            diffs += _close(got[key], want[key], f"{where}.{key}")
        return diffs
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _close(g, w, f"{where}[{i}]")]
    if got == want:
        return []
    g, w = _as_float(got), _as_float(want)
    if g is not None and w is not None and math.isclose(g, w, rel_tol=_RTOL, abs_tol=_ATOL):
        return []
    return [f"{where}: got {got!r}, want {want!r}"]


def _golden_run(tmp: Path) -> dict:
    torch.set_num_threads(1)
    splits = {f"{kind}-{i}": "test" for kind in ("real", "fake") for i in (10, 11)}
    cache = make_synthetic_cache(tmp / "cache", n_real=12, n_fake=12, seed=3, splits=splits)
    cfg = TrainConfig(
        cache=str(cache), name="golden", runs_dir=str(tmp / "runs"), epochs=3, batch_size=4, lr=3e-3,
        seq_len=6, workers=0, patience=5, device="cpu", seed=7, augment="base",
        # the seed's head and augmentations, pinned: the golden numbers predate the measured recipe's defaults
        model=ModelConfig(backbone="tiny", pretrained=False, hidden_size=16, dropout=0.2, temporal_diff=False,
                          pooling="mean"),
    )
    summary = fit(cfg, progress=False)
    run = tmp / "runs" / "golden"
    best = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    out = tmp / "eval"
    code = cli_main(["evaluate", str(run / "best.pt"), str(cache), "--split", "all", "--out", str(out),
                     "--device", "cpu", "--workers", "0"])
    assert code == 0
    video = make_video(tmp / "clip.mp4", frames=12, size=(64, 48))
    det = Detector.from_checkpoint(run / "best.pt", device="cpu", workers=0)
    pred = det.predict_one(video)
    return _exact({
        "best_epoch": summary["best_epoch"],
        "threshold": summary["threshold"],
        "best_weight_sums": _weight_sums(best["model"]),
        "best_metrics": best["metrics"],
        "metrics_csv": _csv_rows(run / "metrics.csv"),
        "val_predictions": _csv_rows(run / "val_predictions.csv"),
        "test_metrics": summary.get("test_metrics"),
        "test_predictions": _csv_rows(run / "test_predictions.csv"),
        "evaluate_metrics": json.loads((out / "metrics.json").read_text()),
        "evaluate_predictions": _csv_rows(out / "predictions.csv"),
        "predict": {"p_fake": pred.p_fake, "label": pred.label, "status": pred.status, "frames": pred.frames},
    })


@pytest.mark.slow
def test_golden_run_matches_to_rounding(tmp_path):
    got = _golden_run(tmp_path)
    if os.environ.get("DFD_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"golden values written to {GOLDEN}")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    diffs = _close(got, want)
    assert not diffs, "golden run changed:\n" + "\n".join(diffs[:20])


def test_the_comparison_tolerates_rounding_but_not_a_change_of_behaviour():
    want = {"loss": "0.46649904549121857", "label": "FAKE", "n": 4, "rows": [{"p": "0.5"}]}
    same = {"loss": "0.46649903804", "label": "FAKE", "n": 4, "rows": [{"p": "0.5000000001"}]}
    assert _close(same, want) == []
    changed = _close({"loss": "0.4668", "label": "REAL", "n": 5, "rows": [{"p": "0.5"}, {"p": "0.1"}]}, want)
    assert [d.split(":")[0] for d in changed] == [".label", ".loss", ".n", ".rows"]
    assert _close({"loss": "0.1"}, {"loss": "0.1", "extra": 1}) == [": keys ['extra']"]
