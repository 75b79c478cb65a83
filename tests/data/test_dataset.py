"""ClipDataset, transforms and the train/validation split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepfake_detector.data.cache import ManifestRow, load_manifest
from deepfake_detector.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipDataset,
    clips_to_device,
    eval_transform,
    fit_length,
    split_rows,
    train_transform,
)
from deepfake_detector.errors import UserError
from tests.cache_helpers import make_synthetic_cache


def numbered_clip(t: int, size: int = 8) -> np.ndarray:
    return np.stack([np.full((size, size, 3), i, dtype=np.uint8) for i in range(t)])


def frame_ids(clip: np.ndarray) -> list[int]:
    return [int(f[0, 0, 0]) for f in clip]


def test_fit_length_subsamples_long_clips_evenly_and_pads_short_ones_by_repetition():
    assert frame_ids(fit_length(numbered_clip(20), 5)) == [0, 5, 10, 14, 19]
    assert frame_ids(fit_length(numbered_clip(3), 6)) == [0, 0, 1, 1, 2, 2]
    assert frame_ids(fit_length(numbered_clip(1), 4)) == [0, 0, 0, 0]
    assert frame_ids(fit_length(numbered_clip(4), 4)) == [0, 1, 2, 3]
    short = frame_ids(fit_length(numbered_clip(7), 20))
    assert short == sorted(short) and set(short) == set(range(7))  # in order, nothing lost


def test_eval_transform_shape_and_imagenet_normalisation():
    clip = np.zeros((3, 16, 16, 3), dtype=np.uint8)
    clip[..., 0] = 255
    x = eval_transform(clip, 5)
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.float32
    expected = (np.array([1.0, 0.0, 0.0]) - IMAGENET_MEAN) / IMAGENET_STD
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor(expected, dtype=torch.float32))
    with pytest.raises(ValueError):
        eval_transform(clip.astype(np.float32), 5)


def test_train_augmentation_is_the_same_on_every_frame_of_a_clip():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    clip = np.stack([frame] * 6)
    base = eval_transform(clip, 6)
    changed = 0
    for seed in range(12):
        x = train_transform(clip, 6, np.random.default_rng(seed))
        for t in range(1, 6):
            torch.testing.assert_close(x[t], x[0])  # identical frames stay identical
        changed += not torch.allclose(x[0], base[0])
    assert changed >= 10  # and the augmentation does something


def test_colour_jitter_in_one_pass_equals_the_three_steps():
    from deepfake_detector.data.dataset import _colour_jitter

    clip = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    for b, c, s in [(1.1, 0.9, 1.2), (0.8, 1.2, 0.8), (1.2, 1.2, 1.2), (1.0, 1.0, 1.0)]:
        x = clip.astype(np.float64) * b  # brightness
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * c + mean  # contrast about the frame mean
        gray = (x @ np.array([0.299, 0.587, 0.114]))[..., None]
        x = (x - gray) * s + gray  # saturation about the grey value
        want = np.clip(np.round(x), 0, 255)
        got = _colour_jitter(clip, b, c, s)
        assert got.dtype == np.uint8 and got.shape == clip.shape
        assert np.abs(got.astype(np.float64) - want).max() <= 1.0
    assert np.array_equal(_colour_jitter(clip, 1.0, 1.0, 1.0), clip)


def test_augmentation_is_deterministic_per_seed_epoch_and_index(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=2, n_fake=2)
    rows = load_manifest(cache)
    ds = ClipDataset(cache, rows, 6, train=True, seed=1)
    a, _ = ds[0]
    b, _ = ds[0]
    torch.testing.assert_close(a, b)
    ds.set_epoch(1)
    c, _ = ds[0]
    assert not torch.allclose(a, c)


def test_clip_dataset_items_and_labels(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=2, n_fake=3, frames=4, size=16)
    rows = sorted(load_manifest(cache), key=lambda r: r.path)
    ds = ClipDataset(cache, rows, seq_len=6, train=False)
    x, y = ds[0]
    assert x.shape == (6, 3, 16, 16) and x.dtype == torch.float32
    assert ds.labels == [1 if r.label == "FAKE" else 0 for r in rows]
    ds_i = ClipDataset(cache, rows, seq_len=6, train=False, return_index=True)
    x2, y2, i = ds_i[2]
    assert i == 2 and ds_i.paths[i] == rows[2].path and y2 == ds.labels[2]


def test_raw_items_normalised_on_the_device_equal_the_float_items_bit_for_bit(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=2, n_fake=2, frames=5, size=16)
    rows = sorted(load_manifest(cache), key=lambda r: r.path)
    for train in (False, True):
        flt = ClipDataset(cache, rows, seq_len=6, train=train, seed=3)
        raw = ClipDataset(cache, rows, seq_len=6, train=train, seed=3, raw=True)
        for i in range(len(rows)):
            xr, yr = raw[i]
            assert xr.dtype == torch.uint8 and xr.shape == (6, 16, 16, 3) and yr == flt[i][1]
        batch_raw = torch.stack([raw[i][0] for i in range(len(rows))])
        batch_flt = torch.stack([flt[i][0] for i in range(len(rows))])
        on_device = clips_to_device(batch_raw, "cpu")
        assert on_device.shape == batch_flt.shape and on_device.is_contiguous()
        assert torch.equal(on_device, batch_flt)  # the same arithmetic: no drift between the paths


def test_clips_to_device_moves_float_batches_unchanged_and_rejects_odd_raw_batches():
    x = torch.randn(2, 3, 3, 4, 4)
    assert clips_to_device(x, "cpu") is x
    with pytest.raises(ValueError, match="uint8"):
        clips_to_device(torch.zeros(2, 3, 4, 4, 3, dtype=torch.int32), "cpu")
    with pytest.raises(ValueError, match="uint8"):
        clips_to_device(torch.zeros(2, 3, 3, 4, 4, dtype=torch.uint8), "cpu")  # channels first


def test_unreadable_clip_is_a_user_error(tmp_path):
    cache = make_synthetic_cache(tmp_path / "c", n_real=1, n_fake=1)
    rows = load_manifest(cache)
    (cache / rows[0].clip).write_bytes(b"not numpy")
    with pytest.raises(UserError, match="unreadable"):
        ClipDataset(cache, rows, 4, train=False)[0]


def _rows(n_groups: int, fakes_per_group: int = 2) -> list[ManifestRow]:
    rows = []
    for g in range(n_groups):
        rows.append(ManifestRow(path=f"real{g}.mp4", label="REAL", group=f"g{g}", status="ok", clip="x"))
        for k in range(fakes_per_group):
            rows.append(
                ManifestRow(path=f"fake{g}_{k}.mp4", label="FAKE", group=f"g{g}", status="ok", clip="x")
            )
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_is_grouped_stratified_and_seeded(seed):
    rows = _rows(20)
    s = split_rows(rows, val_fraction=0.2, seed=seed)
    train_groups = {r.group for r in s["train"]}
    val_groups = {r.group for r in s["val"]}
    assert not train_groups & val_groups, "an original and its fakes must stay on one side"
    assert len(s["train"]) + len(s["val"]) == len(rows) and not s["test"]
    assert {r.label for r in s["val"]} == {"REAL", "FAKE"}
    assert 0.1 <= len(s["val"]) / len(rows) <= 0.3
    again = split_rows(list(reversed(rows)), val_fraction=0.2, seed=seed)
    assert [r.path for r in again["val"]] == [r.path for r in s["val"]]


def test_split_differs_between_seeds():
    rows = _rows(20)
    vals = {tuple(sorted(r.path for r in split_rows(rows, 0.2, seed)["val"])) for seed in range(4)}
    assert len(vals) > 1


def test_dataset_given_splits_are_honoured():
    rows = _rows(6)
    for r in rows:
        r.split = "test" if r.group == "g0" else ("val" if r.group == "g1" else "train")
    s = split_rows(rows, 0.2, 0)
    assert {r.group for r in s["test"]} == {"g0"}
    assert {r.group for r in s["val"]} == {"g1"}
    assert {r.group for r in s["train"]} == {"g2", "g3", "g4", "g5"}
    # a test split alone: validation is carved out of the rest, test stays untouched
    for r in rows:
        r.split = "test" if r.group == "g0" else ""
    s = split_rows(rows, 0.3, 0)
    assert {r.group for r in s["test"]} == {"g0"}
    assert s["val"] and "g0" not in {r.group for r in s["val"] + s["train"]}


def test_only_usable_rows_by_default():
    rows = _rows(10)
    rows.append(ManifestRow(path="noface.mp4", label="REAL", group="x", status="no_face", clip="y"))
    rows.append(ManifestRow(path="broken.mp4", label="FAKE", group="z", status="unreadable"))
    rows.append(ManifestRow(path="nolabel.mp4", label="", group="w", status="ok", clip="q"))
    s = split_rows(rows, 0.2, 0)
    paths = {r.path for part in s.values() for r in part}
    assert not paths & {"noface.mp4", "broken.mp4", "nolabel.mp4"}
    s = split_rows(rows, 0.2, 0, include_no_face=True)
    assert "noface.mp4" in {r.path for part in s.values() for r in part}


def test_tiny_data_falls_back_and_one_group_is_refused():
    s = split_rows(_rows(2, 1), 0.5, 0)  # 2 groups: stratified k-fold impossible, grouped split works
    assert s["train"] and s["val"]
    assert not {r.group for r in s["train"]} & {r.group for r in s["val"]}
    with pytest.raises(UserError):
        split_rows(_rows(1, 3), 0.2, 0)
