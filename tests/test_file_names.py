"""Any file name the OS allows goes through preprocess, train, evaluate and predict, and every CSV/JSON we
write stays valid UTF-8 while naming the exact file (``utils.path_to_text``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deepfake_detector.cli import main
from deepfake_detector.utils import path_from_text, path_to_text
from tests.helpers import make_video

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX byte file names")


def test_path_text_round_trips():
    for raw in (b"videos/a.mp4", b"caf\xc3\xa9.mp4", b"caf\xe9 50%.mp4", b"/abs/\xff\xfe/x.mp4"):
        name = os.fsdecode(raw)
        text = path_to_text(name)
        text.encode("utf-8")  # always valid UTF-8
        assert os.fsencode(path_from_text(text)) == raw
    assert path_to_text("plain/ü.mp4") == "plain/ü.mp4"  # valid names are written as they are


def _files_are_utf8(folder: Path) -> list[Path]:
    checked = []
    for p in folder.rglob("*"):
        if p.suffix in (".csv", ".json", ".yaml", ".md") and p.is_file():
            p.read_bytes().decode("utf-8")
            checked.append(p)
    return checked


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_latin1_names_end_to_end(tmp_path, capsys):
    data = tmp_path / "data"
    for label in ("real", "fake"):
        for i in range(6):
            raw = os.fsencode(str(data / label)) + f"/clip {i} caf".encode() + b"\xe9.mp4"
            make_video(os.fsdecode(raw), frames=10, size=(48, 48), face=False)
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    assert main(["preprocess", str(data), "--out", str(cache), "--detector", "center", "--frames", "4",
                 "--size", "32", "--workers", "0", "--no-progress"]) == 0
    assert main(["train", str(cache), "--name", "r", "--runs-dir", str(runs), "--epochs", "2", "--backbone",
                 "tiny", "--no-pretrained", "--hidden-size", "8", "--seq-len", "4", "--batch-size", "4",
                 "--workers", "0", "--device", "cpu", "--no-tensorboard"]) == 0
    assert main(["train", str(cache), "--name", "r", "--runs-dir", str(runs), "--epochs", "3", "--resume",
                 "--workers", "0", "--device", "cpu"]) == 0
    assert main(["evaluate", str(runs / "r"), str(cache), "--split", "all", "--out", str(tmp_path / "ev"),
                 "--workers", "0", "--device", "cpu"]) == 0
    video = next((data / "fake").iterdir())
    out = tmp_path / "p.json"
    assert main(["predict", str(runs / "r"), str(video), "--workers", "0", "-o", str(out)]) == 0
    checked = _files_are_utf8(tmp_path)
    assert {p.name for p in checked} >= {"manifest.csv", "splits.csv", "predictions.csv", "p.json"}
    manifest = (cache / "manifest.csv").read_text(encoding="utf-8")
    assert manifest.count("bytes:") == 12
    cell = json.loads(out.read_text())["predictions"][0]["path"]
    assert os.fsencode(path_from_text(cell)) == os.fsencode(str(video))
    capsys.readouterr()
