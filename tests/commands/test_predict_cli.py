"""``deepfake-detector predict``: inputs, table, CSV/JSON output, explanations and exit codes."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

from deepfake_detector.cli import main
from deepfake_detector.inference import PREDICTION_FIELDS
from deepfake_detector.utils import path_from_text
from tests.helpers import make_bad_file, make_video
from tests.test_inference import _tiny_legacy_file, make_tiny_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("predict_cli")
    vids = root / "videos"
    face = make_video(vids / "a_face.mp4", frames=20, size=(176, 144), face=True)
    nested = make_video(vids / "sub" / "deeper" / "b face.MOV", frames=20, size=(160, 128), face=True)
    (vids / "notes.txt").write_text("not a video")
    (vids / "sub" / "loop").symlink_to(vids, target_is_directory=True)  # a symlink loop
    noface = make_video(root / "noface.mp4", frames=16, size=(96, 80), face=False)
    bad = make_bad_file(root / "bad.mp4", "random")
    ckpt = make_tiny_checkpoint(root / "best.pt")
    return {"root": root, "vids": vids, "face": face, "nested": nested, "noface": noface, "bad": bad,
            "ckpt": ckpt}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_recursive_with_symlink_loop_and_csv_output(data, capsys, tmp_path):
    out_csv = tmp_path / "out" / "results.csv"
    code, out, err = _run(capsys, data["ckpt"], data["vids"], "--workers", "0", "--device", "cpu",
                          "--output", out_csv)
    assert code == 0, out + err
    assert "a_face.mp4" in out and "b face.MOV" in out and "notes.txt" not in out
    assert "2 video(s)" in out
    with open(out_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == PREDICTION_FIELDS
    assert len(rows) == 2  # each video once, even though the loop reaches the folder again
    for r in rows:
        assert r["status"] == "ok" and r["label"] in ("REAL", "FAKE") and 0.0 <= float(r["p_fake"]) <= 1.0
    assert not [p for p in out_csv.parent.iterdir() if p.name != "results.csv"]  # atomic: no temp files


def test_bad_and_missing_inputs_give_exit_code_1_and_json(data, capsys, tmp_path):
    out_json = tmp_path / "r.json"
    code, out, _ = _run(capsys, data["ckpt"], data["face"], data["bad"], tmp_path / "missing.mp4",
                        "--workers", "0", "-o", out_json)
    assert code == 1
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ".mp4" in ln}
    assert any("missing" in ln for ln in lines.values())
    assert "not scored" in out
    data_json = json.loads(out_json.read_text())
    preds = data_json["predictions"]
    assert [Path(p["path"]).name for p in preds] == ["a_face.mp4", "bad.mp4", "missing.mp4"]
    assert preds[0]["p_fake"] is not None and preds[1]["p_fake"] is None and preds[1]["error"]
    assert preds[2]["status"] == "missing"
    assert set(preds[0]) == set(PREDICTION_FIELDS)
    assert data_json["threshold"] == 0.5


def test_csv_and_txt_lists_relative_to_the_list(data, capsys, tmp_path):
    lists = data["root"] / "lists"
    lists.mkdir(exist_ok=True)
    (lists / "in.csv").write_text("label,path\nREAL,../videos/a_face.mp4\nFAKE,../noface.mp4\n")
    (lists / "in.txt").write_text("# videos\n../videos/a_face.mp4\n\n")
    code, out, _ = _run(capsys, data["ckpt"], lists / "in.csv", lists / "in.txt", "--workers", "0")
    assert code == 0
    assert "2 video(s)" in out  # a_face listed twice: deduplicated
    assert "no_face" in out


def test_no_face_skip_is_unscored(data, capsys):
    code, out, _ = _run(capsys, data["ckpt"], data["noface"], "--workers", "0", "--no-face", "skip")
    assert code == 1 and "no_face" in out


def test_explain_and_threshold(data, capsys, tmp_path):
    ex = tmp_path / "ex"
    code, out, _ = _run(capsys, data["ckpt"], data["face"], "--workers", "0", "--explain", ex,
                        "--threshold", "0")
    assert code == 0 and "FAKE" in out and "threshold 0.000" in out
    pngs = list(ex.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].name.startswith("a_face-")


def test_worker_pool_from_the_cli(data, capsys):
    code, out, _ = _run(capsys, data["ckpt"], data["face"], data["nested"], data["bad"], "--workers", "2",
                        "--batch-size", "1", "-q")
    assert code == 1
    assert "3 video(s)" in out and "path" not in out.splitlines()[0]  # -q: summary only


@pytest.mark.parametrize("argv, message", [
    (["{missing_ckpt}", "{face}"], "checkpoint not found"),
    (["{ckpt}", "{empty}"], "no videos found"),
    (["{ckpt}", "{face}", "--output", "r.xlsx"], ".csv or .json"),
    (["{ckpt}", "{face}", "--threshold", "1.5"], "threshold"),
    (["{ckpt}", "{face}", "--batch-size", "0"], "batch-size"),
    (["{ckpt}", "/definitely/not/here.mp4"], "none of the inputs"),
    (["{ckpt}", "{face}", "--device", "cuda:7"], "CUDA"),
    (["{ckpt}", "{face}", "--output", "/proc/results.csv"], "not writable"),  # before any scoring
    (["{ckpt}", "{face}", "--explain", "/proc/heatmaps"], "explanation folder"),
    (["{ckpt}", "{face}", "--segment-seconds", "5"], "need --segments"),
    (["{ckpt}", "{face}", "--segments", "--segment-seconds", "0"], "--segments: segment seconds must be > 0"),
    (["{ckpt}", "{face}", "--segments", "--max-segments", "0"], "max segments"),
])
def test_usage_errors_exit_2(data, capsys, tmp_path, argv, message):
    if "cuda" in argv and torch.cuda.device_count() > 7:
        pytest.skip("machine has 8 GPUs")
    empty = tmp_path / "empty"
    empty.mkdir()
    subs = {"missing_ckpt": tmp_path / "nope.pt", "face": data["face"], "ckpt": data["ckpt"], "empty": empty}
    code, out, err = _run(capsys, *[a.format(**subs) for a in argv])
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_unsafe_checkpoint_is_refused(data, capsys, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a whole pickled module
    code, _, err = _run(capsys, path, data["face"])
    assert code == 2 and "refusing" in err and len(err.strip().splitlines()) == 1


def test_legacy_checkpoint_exact_mode(data, capsys, tmp_path):
    path = tmp_path / "model_90_acc_4_frames.pt"
    _tiny_legacy_file(path)
    code, out, err = _run(capsys, path, data["face"], "--legacy", "--legacy-mode", "exact", "--workers", "0")
    assert code == 0, err
    assert "a_face.mp4" in out and "threshold 0.500" in out


def test_non_utf8_file_name(data, capsys, tmp_path):
    if os.name == "nt":
        pytest.skip("POSIX byte file names")
    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9 clip.mp4"
    os.link(data["face"], raw)
    out_csv = tmp_path / "r.csv"
    code, out, _ = _run(capsys, data["ckpt"], os.fsdecode(raw), "--workers", "0", "-o", out_csv)
    assert code == 0 and "caf" in out
    text = out_csv.read_bytes().decode("utf-8")  # valid UTF-8 whatever the names
    cell = next(line.split(",")[0] for line in text.splitlines() if "caf" in line)
    assert cell.startswith("bytes:") and os.fsencode(path_from_text(cell)) == raw  # names the exact file


def test_json_output_is_strict_utf8_for_non_utf8_names(tmp_path):
    """Lone surrogates (undecodable name bytes) would make strict JSON parsers fail."""
    import json as _json
    import os as _os

    from deepfake_detector.commands.predict import write_results
    from deepfake_detector.inference import Prediction

    out = tmp_path / "o.json"
    write_results(str(out), [Prediction(path=_os.fsdecode(b"/data/caf\xe9.mp4"), status="missing")])
    raw = out.read_bytes()
    raw.decode("utf-8", errors="strict")
    cell = _json.loads(raw)["predictions"][0]["path"]
    assert cell == "bytes:/data/caf%E9.mp4" and _os.fsencode(path_from_text(cell)) == b"/data/caf\xe9.mp4"


def test_explain_folder_that_fills_up_is_reported_and_exits_1(data, capsys, tmp_path, monkeypatch):
    import errno

    import deepfake_detector.explain as ex

    writes: list = []

    def disk_full(path, data):
        writes.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex, "atomic_write_bytes", disk_full)
    code, out, err = _run(capsys, data["ckpt"], data["face"], data["nested"], "--workers", "0",
                          "--explain", tmp_path / "ex")
    assert code == 1
    assert "2 video(s): " in out and "not scored" not in out  # the verdicts are all there
    assert "0 explanation(s) written" in out
    assert "warning: 2 scored video(s) got no explanation" in err
    assert "Traceback" not in err
    assert len(writes) == 1  # explaining stopped after the first failure


@pytest.mark.parametrize("content", [b"garbage\n", "truncated"])
def test_corrupt_checkpoint_is_unreadable_not_unsafe(data, capsys, tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(data["ckpt"].read_bytes()[:300] if content == "truncated" else content)
    code, _, err = _run(capsys, path, data["face"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: cannot read checkpoint") and "not a readable checkpoint (corrupt" in err
    assert "refusing" not in err and "Weights only load failed" not in err


def test_scores_near_the_threshold_get_enough_digits_and_long_errors_are_announced(tmp_path):
    from deepfake_detector.commands import predict as cmd
    from deepfake_detector.inference import Prediction

    thr = 0.504
    long_error = "cannot decode " + "/very/long/folder" * 10 + "/clip.mp4: moov atom not found"
    preds = [Prediction(path="a.mp4", p_fake=0.50412, label="FAKE", status="ok", frames=6, face_ratio=1.0),
             Prediction(path="b.mp4", p_fake=0.50381, label="REAL", status="ok", frames=6, face_ratio=1.0),
             Prediction(path="c.mp4", status="unreadable", error=long_error)]
    digits = cmd.score_digits(preds, thr)
    assert digits == 4
    assert cmd.score_digits(preds[2:], thr) == 3 and cmd.score_digits([], thr) == 3
    table = cmd.format_table(preds, digits, err_width=80)
    rows = {ln.split()[0]: ln.split() for ln in table.splitlines()[2:]}
    assert rows["a.mp4"][1:3] == ["0.5041", "FAKE"] and rows["b.mp4"][1:3] == ["0.5038", "REAL"]
    assert "threshold 0.5040;" in cmd.summary_line(preds, 1.0, thr, digits)
    error_cell = table.splitlines()[-1].split("unreadable", 1)[1]
    assert "cannot decode" in error_cell and "moov atom not found" in error_cell and " ... " in error_cell
    assert cmd.shortened_errors(preds, 80) == 1 and cmd.shortened_errors(preds, 1000) == 0
    assert cmd.table_error_width(preds, digits) >= 80


def test_shortened_errors_are_mentioned_in_the_summary(data, capsys, tmp_path, monkeypatch):
    from deepfake_detector.inference import Detector

    long_error = "cannot decode: " + "very long detail " * 12 + "the useful end"
    original = Detector.predict

    def predict(self, paths, **kw):
        preds = original(self, paths, **kw)
        for p in preds:
            if p.p_fake is None:
                p.error = long_error
        return preds

    monkeypatch.setattr(Detector, "predict", predict)
    monkeypatch.setenv("COLUMNS", "100")
    out_csv = tmp_path / "r.csv"
    code, out, _ = _run(capsys, data["ckpt"], data["face"], tmp_path / "missing.mp4", "--workers", "0",
                        "-o", out_csv)
    assert code == 1
    assert f"(1 error message(s) shortened in the table; full text in {out_csv})" in out
    assert "the useful end" in out  # shortened in the middle: the cause at the end stays visible
    assert long_error in out_csv.read_text()
    code, out, _ = _run(capsys, data["ckpt"], data["face"], tmp_path / "missing.mp4", "--workers", "0")
    assert "full text with --output FILE.csv" in out


def test_celebdf_test_list_is_read_with_its_labels_and_summarised(data, capsys, tmp_path):
    """Celeb-DF's ``List_of_testing_videos.txt``: ``1`` = real, ``0`` = fake, paths from the list's folder."""
    import shutil

    root = tmp_path / "Celeb-DF-v2"
    (root / "Celeb-real").mkdir(parents=True)
    (root / "Celeb-synthesis").mkdir()
    shutil.copy(data["face"], root / "Celeb-real" / "id0_0000.mp4")
    shutil.copy(data["noface"], root / "Celeb-synthesis" / "id0_id1_0000.mp4")
    listing = root / "List_of_testing_videos.txt"
    listing.write_text("1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n")
    out_json = tmp_path / "r.json"
    code, out, err = _run(capsys, data["ckpt"], listing, "--workers", "0", "-o", out_json)
    assert code == 0, out + err
    assert "2 video(s)" in out and "missing" not in out
    lines = out.splitlines()
    summary = next(i for i, ln in enumerate(lines) if "against the lists' labels" in ln)
    assert summary > next(i for i, ln in enumerate(lines) if "id0_id1_0000.mp4" in ln)  # after the table
    assert "1 REAL, 1 FAKE" in lines[summary] and "accuracy" in lines[summary]
    assert "ROC-AUC" in lines[summary]
    labels = json.loads(out_json.read_text())["labels"]
    assert labels["labelled"] == labels["scored"] == 2 and labels["real"] == 1 and labels["fake"] == 1
    assert 0.0 <= labels["accuracy"] <= 1.0 and 0.0 <= labels["auc"] <= 1.0
    # the same list elsewhere, with an absolute path and a ../ path: read as written
    other = tmp_path / "lists" / "mine.txt"
    other.parent.mkdir()
    other.write_text(f"1 {root / 'Celeb-real' / 'id0_0000.mp4'}\n0 ../Celeb-DF-v2/Celeb-synthesis/"
                     "id0_id1_0000.mp4\n")
    code, out, err = _run(capsys, data["ckpt"], other, "--workers", "0", "-q")
    assert code == 0, out + err
    assert "2 video(s)" in out and "1 REAL, 1 FAKE" in out


def test_csv_list_label_column_gives_the_summary_too(data, capsys, tmp_path):
    (tmp_path / "l.csv").write_text(f"path,label\n{data['face']},REAL\n{data['noface']},1\n")
    code, out, _ = _run(capsys, data["ckpt"], tmp_path / "l.csv", "--workers", "0", "-q")
    assert code == 0
    assert "against the lists' labels (1 scored: 1 REAL, 0 FAKE)" in out  # "1" is ambiguous: no label
    assert "ROC-AUC undefined (one class only)" in out


def test_legacy_readout_flag(data, capsys, tmp_path):
    path = tmp_path / "model_90_acc_4_frames.pt"
    _tiny_legacy_file(path)
    scores = {}
    for readout in ("last", "mean"):
        out_json = tmp_path / f"{readout}.json"
        code, _, err = _run(capsys, path, data["face"], "--legacy", "--legacy-mode", "exact", "--workers",
                            "0", "--legacy-readout", readout, "-o", out_json)
        assert code == 0, err
        result = json.loads(out_json.read_text())
        assert result["legacy"]["readout"] == readout
        scores[readout] = result["predictions"][0]["p_fake"]
    assert scores["last"] != scores["mean"]
    code, _, err = _run(capsys, path, data["face"], "--legacy", "--legacy-readout", "mean", "--workers", "0")
    assert code == 2 and "--legacy-mode exact" in err  # fixed mode has no such readout


def test_segments_in_table_csv_and_json(data, capsys, tmp_path):
    video = make_video(tmp_path / "long.mp4", frames=100, size=(176, 144), face=True)  # 4 s
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    code, out, err = _run(capsys, data["ckpt"], video, "--workers", "0", "--segments", "--segment-seconds",
                          "1", "-o", out_csv)
    assert code == 0, out + err
    assert "long.mp4: highest of 4 window(s)" in out and "wider than" not in out
    with open(out_csv, newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert list(row) == PREDICTION_FIELDS + ["segments"]
    cells = row["segments"].split(";")
    assert [c.split(":")[0] for c in cells] == ["0.0-1.0", "1.0-2.0", "2.0-3.0", "3.0-4.0"]
    assert f"{float(row['p_fake']):.3f}" == max((c.split(":")[1] for c in cells), key=float)
    code, out, _ = _run(capsys, data["ckpt"], video, "--workers", "0", "--segments", "--segment-seconds", "1",
                        "--max-segments", "2", "-o", out_json)
    assert code == 0 and "1 long video(s) scored in windows wider than 1 s (at most 2 per video" in out
    doc = json.loads(out_json.read_text())
    (pred,) = doc["predictions"]
    assert doc["segments"] == {"seconds": 1.0, "max_segments": 2} and pred["segment_seconds"] == 2.0
    assert [(s["start"], s["end"]) for s in pred["segments"]] == [(0.0, 2.0), (2.0, 4.0)]
    assert pred["p_fake"] == max(s["p_fake"] for s in pred["segments"])
    assert set(pred["segments"][0]) == {"start", "end", "p_fake", "frames", "status"}
    # without --segments nothing changes
    code, _, _ = _run(capsys, data["ckpt"], video, "--workers", "0", "-o", out_json)
    assert code == 0 and set(json.loads(out_json.read_text())["predictions"][0]) == set(PREDICTION_FIELDS)
