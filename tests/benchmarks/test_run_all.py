"""``run_all --summarize`` turns the stage scripts' JSON into the one table (here from a tiny training
benchmark and hand-made stage files in the scripts' formats)."""

from __future__ import annotations

import json


def test_summary_table_from_the_stage_json_files(tmp_path, capsys):
    from benchmarks import bench_train, run_all

    bench_train.main(["--backbone", "tiny", "--hidden", "8", "--steps", "1", "--device", "cpu",
                      "--json-out", str(tmp_path / "train.json")])
    (tmp_path / "preprocess.json").write_text(json.dumps([
        {"video": "long-gop", "size": "1280x720", "frames": 900, "ref_s": 100.0, "ours_s": 2.0,
         "floor_s": 1.8, "floor_how": "sequential"}]))
    (tmp_path / "predict_e2e.json").write_text(json.dumps({
        "device": "CPU", "backbone": "tiny", "videos": 4, "one_video_s": 1.5,
        "rows": [{"setup": "reference-style", "videos_s": 0.1}, {"setup": "ours", "videos_s": 0.8},
                 {"setup": "floor", "videos_s": 2.0}]}))
    assert run_all.main(["--summarize", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    stages = {r["stage"].split()[0] + " " + r["stage"].split()[1]: r for r in summary["rows"]}
    pre = stages["preprocess long-gop"]
    assert abs(pre["x_ref"] - 50.0) < 1e-9
    assert abs(pre["x_floor"] - 2.0 / 1.8) < 1e-9  # ours takes 1.11x the floor's time
    e2e = stages["predict end"]
    assert abs(e2e["x_ref"] - 8.0) < 1e-9 and abs(e2e["x_floor"] - 2.5) < 1e-9
    train = stages["train tiny"]
    assert train["reference"] > 0 and train["ours"] > 0 and train["floor"] is None  # no GPU: no FLOP bound
    for text in ("performance summary on CPU", "50.00x", "8.00x", "frames/s", "videos/s"):
        assert text in out, text
