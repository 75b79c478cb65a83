"""The Cache object and the manifest format: one reader of preprocess.json, versioned manifests."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest

from deepfake_detector.data import cache as cache_mod
from deepfake_detector.data.cache import (
    MANIFEST_SCHEMA,
    Cache,
    CacheConfigError,
    ManifestRow,
    ManifestWriter,
    save_clip,
)
from deepfake_detector.errors import UserError
from tests.cache_helpers import make_synthetic_cache

# the manifest columns and preprocess.json as preprocess wrote them before caches recorded a manifest schema
TODAY_COLUMNS = ["path", "label", "split", "group", "status", "frames", "face_ratio", "error", "clip",
                 "source_frames", "fps", "duration", "width", "height", "seconds", "source_stat"]
TODAY_META = {
    "cache_format": 1,
    "preprocess": {"frames": 4, "size": 16, "margin": 0.3, "detector": "dlib", "detect_max_side": 640,
                   "upsample": 1, "max_decode_side": 1920, "max_duration_s": 3600.0, "max_pixels": 16777216,
                   "no_face": "center", "timeout_s": 300.0, "smooth": 3},
    "dataset_root": "/data/set",
    "format": "folders",
    "version": "0.1.0",
    "clip_layout": "uint8 [T,S,S,3] RGB .npy under clips/, T <= frames (short videos), see manifest",
}


def _write_today_cache(root):
    """A cache exactly as today's preprocess leaves it, written by hand (no package writer involved)."""
    root.mkdir(parents=True)
    clip = np.zeros((4, 16, 16, 3), np.uint8)
    clip_rel = save_clip(root, "real/a.mp4", clip)
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(TODAY_COLUMNS)
        w.writerow(["real/a.mp4", "REAL", "train", "g1", "ok", "4", "1.0", "", clip_rel, "120", "25.0", "4.8",
                    "176", "144", "0.52", "1234:5678"])
        w.writerow(["fake/b.mp4", "FAKE", "", "g1", "unreadable", "0", "0.0", "empty file (0 bytes)", "", "0",
                    "0.0", "0.0", "0", "0", "0.001", ""])
    (root / "preprocess.json").write_text(json.dumps(TODAY_META), encoding="utf-8")
    return root, clip_rel


def test_a_cache_written_by_todays_code_still_loads(tmp_path):
    root, clip_rel = _write_today_cache(tmp_path / "cache")
    cache = Cache.open(root)
    assert cache.manifest_schema == 1
    rows = {r.path: r for r in cache.rows()}
    a = rows["real/a.mp4"]
    assert a == ManifestRow(path="real/a.mp4", label="REAL", split="train", group="g1", status="ok", frames=4,
                            face_ratio=1.0, clip=clip_rel, source_frames=120, fps=25.0, duration=4.8,
                            width=176, height=144, seconds=0.52, source_stat="1234:5678")
    assert a.usable and not rows["fake/b.mp4"].usable
    assert cache.preprocess["frames"] == 4 and cache.preprocess_config().size == 16
    assert cache.dataset_root == "/data/set"
    assert cache.load_clip(a.clip).shape == (4, 16, 16, 3)
    assert cache.features_dir("k") == root / "features" / "k"
    # and pandas reads the manifest as a plain table (no header or comment conventions)
    pd = pytest.importorskip("pandas")
    assert list(pd.read_csv(root / "manifest.csv").columns) == TODAY_COLUMNS


def test_preprocess_records_the_manifest_schema_and_the_writer_keeps_todays_columns(tmp_path):
    from deepfake_detector.config import PreprocessConfig
    from deepfake_detector.data.preprocess import _cache_meta

    meta = _cache_meta(PreprocessConfig(), "/d", "folders", {"grouping": "per-video", "compression": "c23"})
    assert meta["manifest_schema"] == MANIFEST_SCHEMA == 3
    assert meta["grouping"] == "per-video" and meta["compression"] == "c23" and meta["grouping_note"] == ""
    w = ManifestWriter(tmp_path)
    w.add(ManifestRow(path="x.mp4", status="ok"))
    w.flush()
    # schema 2 adds ``method`` after ``group``; schema 3's track columns only appear with several tracks
    with open(tmp_path / "manifest.csv", newline="") as fh:
        assert next(csv.reader(fh)) == [*TODAY_COLUMNS[:4], "method", *TODAY_COLUMNS[4:]]


def test_a_schema_1_manifest_reads_with_an_empty_method_and_an_ungrouped_cache_says_so(tmp_path):
    root, _ = _write_today_cache(tmp_path / "cache")
    cache = Cache.open(root)
    assert {r.method for r in cache.rows()} == {""}
    info = cache.dataset_info()
    assert info == {"format": "folders", "grouping": "", "grouping_note": "", "compression": ""}
    ungrouped = make_synthetic_cache(tmp_path / "synthetic", n_real=2, n_fake=2)
    rows = Cache.open(ungrouped).rows()
    for r in rows:
        r.group = r.path
    w = ManifestWriter(ungrouped)
    for r in rows:
        w.add(r)
    w.flush()
    assert Cache.open(ungrouped).dataset_info()["grouping"] == "per-video"  # inferred for older caches


def test_older_manifests_are_upgraded_by_the_one_reader_and_newer_ones_refused(tmp_path, monkeypatch):
    root, _ = _write_today_cache(tmp_path / "cache")
    seen = []

    def v1_to_v2(raw):
        seen.append(raw["path"])
        raw.setdefault("group", "from-upgrader")
        raw["error"] = raw.get("error") or "upgraded"
        return raw

    monkeypatch.setattr(cache_mod, "MANIFEST_SCHEMA", 3)
    monkeypatch.setattr(cache_mod, "_MANIFEST_UPGRADERS", {1: cache_mod._manifest_v1_to_v2, 2: v1_to_v2})
    rows = {r.path: r for r in Cache.open(root).rows()}  # no manifest_schema recorded: schema 1
    assert sorted(seen) == ["fake/b.mp4", "real/a.mp4"] and rows["real/a.mp4"].error == "upgraded"
    meta = dict(TODAY_META, manifest_schema=3)
    (root / "preprocess.json").write_text(json.dumps(meta))
    seen.clear()
    Cache.open(root).rows()
    assert seen == []  # already current
    (root / "preprocess.json").write_text(json.dumps(dict(meta, manifest_schema=4)))
    with pytest.raises(UserError, match="manifest schema 4 is newer"):
        Cache.open(root)
    # a rerun of preprocess records the oldest layout its manifests may have: one it does not rewrite
    # (another shard's) is still read through the upgraders; a new cache records the current layout
    (root / "preprocess.json").write_text(json.dumps(TODAY_META))
    assert cache_mod.manifest_schema_to_record(root) == 1
    assert cache_mod.manifest_schema_to_record(tmp_path / "new") == 3


def test_missing_and_unreadable_caches_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"no manifest.csv in .*run 'deepfake-detector preprocess' first"):
        Cache.open(tmp_path / "nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="not a manifest"):
        Cache.open(tmp_path / "bad")
    (tmp_path / "bad" / "preprocess.json").write_text("{not json")
    cache = Cache(tmp_path / "bad")
    with pytest.raises(CacheConfigError, match="preprocess.json is unreadable: "):
        _ = cache.preprocess


def test_settings_are_read_from_every_known_layout(tmp_path):
    made = make_synthetic_cache(tmp_path / "c", n_real=2, n_fake=2, frames=4, size=16)  # {"config": {...}}
    assert Cache(made).preprocess["size"] == 16
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "preprocess.json").write_text(json.dumps({"frames": 7}))
    assert Cache(flat).preprocess == {"frames": 7} and Cache(flat).preprocess_config().frames == 7
    assert Cache(tmp_path / "none").preprocess == {} and Cache(tmp_path / "none").preprocess_config() is None


def test_a_cache_pickles_as_its_folder(tmp_path):
    made = make_synthetic_cache(tmp_path / "c", n_real=2, n_fake=2, frames=4, size=16)
    cache = Cache.open(made)
    again = pickle.loads(pickle.dumps(cache))
    assert again.root == cache.root and again._rows is None and len(again.rows()) == 4
    assert Cache.of(cache) is cache and str(Cache.of(str(made))) == str(made)
