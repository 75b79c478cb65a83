"""The request batcher (``serve --batch-window-ms``): one network call for several uploads' clips.

What must hold: the scores are the unbatched ones (the real Detector on the tiny checkpoint, CPU,
1e-6); a batch forms when several workers finish preparing clips together; a lone request does not
wait for the window; a failed network call fails its batch's requests (500), not the server; closing
releases every waiting thread. Stand-ins make the timing deterministic; the real model checks numbers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from deepfake_detector.inference import Prediction
from deepfake_detector.serve import ServeSettings, create_app
from deepfake_detector.serve.batching import BatcherClosed, ClipBatcher, supports_batching
from tests.helpers import carphone_path
from tests.serve.conftest import StubDetector, live_server, upload_dir_files


class FakeScorer:
    """``score_clips`` over fake clips (the clip is its score); records each call's batch size."""

    def __init__(self, gate: threading.Event | None = None, fail: Exception | None = None) -> None:
        self.batches: list[int] = []
        self.gate = gate
        self.fail = fail

    def clip_config(self) -> None:
        return None

    def score_clips(self, items: list[tuple[str, Any]]) -> list[Prediction]:
        if self.gate is not None:
            self.gate.wait(timeout=30)
        self.batches.append(len(items))
        if self.fail is not None:
            raise self.fail
        return [Prediction(path=p, p_fake=float(c), status="ok") for p, c in items]


def _ready_batcher(scorer: FakeScorer, window_s: float, max_batch: int, prepare_gate: threading.Barrier):
    def prepare(path: str) -> float:
        prepare_gate.wait(timeout=30)  # every thread is "decoding" until all are
        return float(path.split("-")[1]) / 10
    return ClipBatcher(scorer, window_s, max_batch, prepare=prepare)


def test_clips_prepared_together_go_through_the_network_once() -> None:
    scorer = FakeScorer()
    batcher = _ready_batcher(scorer, window_s=5.0, max_batch=4, prepare_gate=threading.Barrier(4))
    try:
        with ThreadPoolExecutor(4) as pool:
            preds = list(pool.map(batcher.predict, [f"v-{i}" for i in range(4)]))
    finally:
        batcher.close()
    assert [p.p_fake for p in preds] == [0.0, 0.1, 0.2, 0.3]  # each thread gets its own clip's score
    assert scorer.batches == [4]


def test_a_lone_request_does_not_wait_for_the_window() -> None:
    scorer = FakeScorer()
    batcher = _ready_batcher(scorer, window_s=10.0, max_batch=4, prepare_gate=threading.Barrier(1))
    try:
        t0 = time.monotonic()
        assert batcher.predict("v-5").p_fake == 0.5
        assert time.monotonic() - t0 < 5.0  # nobody else was preparing a clip: scored at once
    finally:
        batcher.close()
    assert scorer.batches == [1]


def test_clips_arriving_while_the_network_runs_form_the_next_batch() -> None:
    gate = threading.Event()
    scorer = FakeScorer(gate=gate)
    batcher = ClipBatcher(scorer, 0.0, max_batch=8, prepare=lambda p: 0.5)
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(batcher.predict, "v-0")
            time.sleep(0.2)  # the first clip is in the network (held by the gate)
            rest = [pool.submit(batcher.predict, f"v-{i}") for i in range(1, 4)]
            time.sleep(0.2)
            gate.set()
            assert first.result(timeout=30).p_fake == 0.5 and all(f.result(timeout=30) for f in rest)
    finally:
        batcher.close()
    assert scorer.batches == [1, 3]


def test_a_failed_network_call_fails_its_batch_and_the_batcher_goes_on() -> None:
    scorer = FakeScorer(fail=RuntimeError("CUDA out of memory"))
    batcher = _ready_batcher(scorer, window_s=5.0, max_batch=2, prepare_gate=threading.Barrier(2))
    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(batcher.predict, f"v-{i}") for i in range(2)]
            for f in futures:
                with pytest.raises(RuntimeError, match="batched network call failed: CUDA out of memory"):
                    f.result(timeout=30)
        scorer.fail = None
        batcher._prepare = lambda p: 0.25
        assert batcher.predict("v-1").p_fake == 0.25
    finally:
        batcher.close()


def test_close_releases_waiting_threads() -> None:
    gate = threading.Event()
    batcher = ClipBatcher(FakeScorer(gate=gate), 0.0, max_batch=1, prepare=lambda p: 0.5)
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(batcher.predict, "v-0")  # in the network, held by the gate
        time.sleep(0.2)
        waiting = pool.submit(batcher.predict, "v-1")  # queued behind it (max_batch 1)
        time.sleep(0.2)
        closer = threading.Thread(target=batcher.close, kwargs={"timeout": 30})
        closer.start()
        with pytest.raises(BatcherClosed):
            waiting.result(timeout=30)
        gate.set()
        assert running.result(timeout=30).p_fake == 0.5  # the call under way finishes
        closer.join(timeout=30)
    with pytest.raises(BatcherClosed):
        batcher.score("v-2", 0.5)


def test_only_detectors_that_score_prepared_clips_are_batched(real_detector: Any) -> None:
    assert supports_batching(real_detector) and not supports_batching(StubDetector())


# --------------------------------------------------------------------------------------------------
# the real detector
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_batched_scores_equal_unbatched_ones(real_detector: Any, face_video: Path,
                                             faceless_video: Path) -> None:
    paths = [str(face_video), str(faceless_video), str(carphone_path())]
    expected = {p: real_detector.predict_one(p) for p in paths}
    sizes: list[int] = []
    batcher = ClipBatcher(real_detector, window_s=5.0, max_batch=3, on_batch=sizes.append)
    try:
        with ThreadPoolExecutor(3) as pool:
            got = list(pool.map(batcher.predict, paths))
    finally:
        batcher.close()
    for pred in got:
        want = expected[pred.path]
        assert (pred.status, pred.label, pred.frames, pred.error) == (want.status, want.label, want.frames,
                                                                     want.error)
        assert pred.p_fake == pytest.approx(want.p_fake, abs=1e-6)
        assert pred.face_ratio == pytest.approx(want.face_ratio)
    assert max(sizes) >= 2  # all three prepared at once: at least two shared a forward pass


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_concurrent_uploads_share_forward_passes(real_detector: Any, face_video: Path,
                                                 serve_tmp: Path) -> None:
    """Through the server: concurrent uploads are answered with the unbatched verdicts, and the
    ``batch_clips`` histogram shows passes of more than one clip."""
    want = real_detector.predict_one(str(face_video))
    settings = ServeSettings(tmp_dir=str(serve_tmp), workers=3, queue_size=6, batch_window_ms=1000,
                             cache_entries=0, warmup=False)
    data = face_video.read_bytes()
    with live_server(create_app(real_detector, settings)) as base:
        barrier = threading.Barrier(6)

        def upload(i: int) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=120) as client:
                barrier.wait(timeout=30)
                return client.post("/api/v1/predict", files={"file": (f"v{i}.mp4", data, "video/mp4")})

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(upload, range(6)))
        assert [r.status_code for r in answers] == [200] * 6
        for r in answers:
            assert r.json()["p_fake"] == pytest.approx(want.p_fake, abs=1e-6)
        text = httpx.get(base + "/metrics", timeout=30).text
        count = _sample(text, "deepfake_detector_batch_clips_count")
        singles = _sample(text, 'deepfake_detector_batch_clips_bucket{le="1.0"}')
        assert count < 6 and singles < count, text  # fewer passes than uploads: some shared one
        assert httpx.get(base + "/api/v1/model", timeout=30).json()["server"]["batch_window_ms"] == 1000
    assert upload_dir_files(serve_tmp) == []


def _sample(text: str, name: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
    return float(line.split()[-1])


def test_batching_needs_two_workers(real_detector: Any, serve_tmp: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    settings = ServeSettings(tmp_dir=str(serve_tmp), workers=1, batch_window_ms=10, warmup=False)
    app = create_app(real_detector, settings)
    with TestClient(app):
        assert app.state.serve.batcher is None
    assert "--batch-window-ms ignored: batching needs --workers 2 or more" in caplog.text
