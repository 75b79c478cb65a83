"""End-to-end: the upload page in headless Chromium (Debian's ``chromium``) driven by Playwright.

Real uvicorn server (in this process), real Detector (tiny checkpoint), real face video. The browser
side runs in a child process (``browser_driver.py``) under a hard time limit, killed with its whole
process group if stuck. Skipped with a reason only where Chromium or Playwright is absent
(``.ci/run`` installs Chromium). Never runs ``playwright install``: the system browser is used
through ``executable_path``.

Set ``DEEPFAKE_DETECTOR_SCREENSHOT=docs/img/serve.png`` to also save the verdict screenshot there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_detector.serve import ServeSettings, create_app
from tests.helpers import carphone_path, make_bad_file
from tests.serve.conftest import live_server, upload_dir_files

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(400)]

DRIVER = Path(__file__).with_name("browser_driver.py")
DRIVER_TIMEOUT_S = 300


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("headless Chromium is not installed (apt-get install chromium; .ci/run does this)")
    return ""  # unreachable


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = _chromium()
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed")
    return exe


def drive(scenario: str, **args) -> dict:
    """Run one browser scenario in its own process group; kill the group if it overruns."""
    proc = subprocess.Popen([sys.executable, str(DRIVER), scenario, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's own group: Python, Playwright's node, Chromium
        out, err = proc.communicate()
        pytest.fail(f"the browser did not finish within {DRIVER_TIMEOUT_S} s\n{err[-3000:]}")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"no result from the browser driver (rc={proc.returncode})\n{out[-2000:]}\n{err[-3000:]}"
    result = json.loads(lines[-1])
    assert "exception" not in result, result["exception"]
    return result


def test_upload_page_shows_verdict(chromium: str, real_detector, tmp_path: Path, serve_tmp: Path) -> None:
    app = create_app(real_detector, ServeSettings(tmp_dir=str(serve_tmp)))
    shot, shot_bad = tmp_path / "serve.png", tmp_path / "serve-415.png"
    bad = make_bad_file(tmp_path / "holiday.mp4", "png")
    with live_server(app) as base:
        seen = drive("verdict", chromium=chromium, base=base, video=str(carphone_path()), bad=str(bad),
                     screenshot=str(shot), screenshot_bad=str(shot_bad))
    assert seen["model_line"].startswith("Model: tiny-serve")
    assert seen["limit_mb"] == "200"
    assert seen["focused_after_two_tabs"] == "file"  # keyboard reaches the file picker
    # the verdict, its explanation and the facts are shown; progress went to 100 % with a spinner
    assert seen["verdict"] in ("REAL", "FAKE")
    # an uncalibrated checkpoint: a P(FAKE) score, never "probability of a deepfake"
    assert "P(FAKE) score" in seen["verdict_text"] and "probability of a deepfake" not in seen["verdict_text"]
    assert "carphone_pristine.mp4" in seen["file_line"]
    # the page used the jobs API and polled it
    assert any("/api/v1/jobs/" in u for u in seen["requests"])
    # the heat maps: the real file name, full size in a dialog (and as a link to open or save)
    assert seen["explain_name"] == seen["dialog_name"] == "carphone_pristine.mp4"
    assert all(str(h).startswith("blob:") for h in seen["explain_links"])
    natural, shown = seen["dialog_img"]
    assert natural > 0 and abs(shown - natural) <= 1, seen["dialog_img"]
    assert seen["dialog_closed"]
    assert 0.0 <= float(seen["meter"]) <= 100.0
    assert seen["explain_visible"] and seen["explain_width"] > 0
    assert seen["frames"].isdigit()
    assert seen["progress_hidden"] and seen["message_hidden"]
    assert seen["progress_seen"] == {"upload100": True, "analysing": True}
    # a non-video gets a clear message
    assert seen["bad_title"] == "Not a video we can read"
    assert seen["bad_text"].startswith("holiday.mp4: Not a readable video file")
    # nothing outside the server was requested (no CDN), and no script errors (blob: the heat map's own URL)
    assert seen["requests"] and all(u.startswith((base, "data:", "blob:" + base)) for u in seen["requests"])
    assert seen["errors"] == []
    assert shot.stat().st_size > 10_000 and shot_bad.stat().st_size > 5_000
    extra = os.environ.get("DEEPFAKE_DETECTOR_SCREENSHOT")
    if extra:
        Path(extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, extra)
    assert upload_dir_files(serve_tmp) == []


def test_token_prompt_then_verdict(chromium: str, real_detector, face_video: Path, serve_tmp: Path) -> None:
    app = create_app(real_detector, ServeSettings(tmp_dir=str(serve_tmp), token="browser-token-42"))
    with live_server(app) as base:
        seen = drive("token", chromium=chromium, base=base, video=str(face_video), token="browser-token-42")
    assert seen["first_title"] == "Access token needed"
    assert seen["verdict"] in ("REAL", "FAKE")
    assert seen["errors"] == []


def test_api_reference_page_works_offline(chromium: str, real_detector, serve_tmp: Path) -> None:
    app = create_app(real_detector, ServeSettings(tmp_dir=str(serve_tmp)))
    with live_server(app) as base:
        seen = drive("docs", chromium=chromium, base=base)
    assert "OpenAPI 3" in seen["api_line"]
    ops = [" ".join(o.split()) for o in seen["operations"]]
    assert "POST /api/v1/predict" in ops and "GET /healthz" in ops and "GET /api/v1/model" in ops
    for text in ("explain", "multipart/form-data", "413", "415", "503"):
        assert text in seen["predict_text"], text
    assert seen["curl"].startswith("curl -F") and base in seen["curl"]
    # markdown `code` spans are <code> elements, not literal backticks
    assert "`" not in seen["predict_text"] and "`" not in seen["healthz_text"]
    assert "file" in seen["predict_code"] and "no_face" in seen["predict_code"]
    assert " ".join(seen["predict_body"].split()) == "multipart/form-data with field file: the video (binary)"
    assert "explain=maybe" in seen["response_code"] and "422" not in seen["predict_text"]
    assert "503" in seen["healthz_text"] and "not loaded" in seen["healthz_text"]
    assert seen["requests"] and all(u.startswith(base) or u.startswith("data:") for u in seen["requests"])
    assert seen["errors"] == []
