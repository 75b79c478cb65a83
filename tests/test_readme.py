"""The README's Python API snippet runs as pasted: a script without a ``__main__`` guard, no traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_detector.config import PreprocessConfig
from tests.helpers import make_tiny_checkpoint, make_video

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippet() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.timeout(180)
def test_readme_python_snippet_runs_as_pasted(tmp_path):
    code = _snippet()
    assert "__main__" not in code  # the way people paste it
    make_tiny_checkpoint(tmp_path / "runs" / "RUN" / "best.pt",
                         PreprocessConfig(frames=4, size=32, detector="center"), seq_len=4)
    for name in ("a.mp4", "b.mp4"):
        make_video(tmp_path / name, frames=12, size=(64, 48))
    (tmp_path / "snippet.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    proc = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=170, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["a.mp4", "b.mp4"] and all(" ok" in ln for ln in lines)
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 2
