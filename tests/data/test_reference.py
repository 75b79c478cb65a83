"""The reference preprocessing (legacy exact mode) from several threads: one dlib detector per thread.

dlib's HOG scanner keeps its image pyramid inside the detector object, so one detector shared by
``serve``'s worker threads corrupted the heap; a lock made legacy exact mode one video at a time. Each
thread now builds its own detector, and concurrent runs give the sequential clips bit for bit.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from deepfake_detector.data import reference
from tests.helpers import make_video


def test_each_thread_has_its_own_dlib_detector() -> None:
    pytest.importorskip("dlib")
    here = reference._dlib_hog()
    assert reference._dlib_hog() is here  # built once per thread
    seen: list = []
    barrier = threading.Barrier(3)

    def other() -> None:
        barrier.wait(timeout=30)
        seen.append(reference._dlib_hog())

    threads = [threading.Thread(target=other) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(seen) == 3 and len({id(d) for d in seen + [here]}) == 4


@pytest.mark.timeout(120)
def test_concurrent_reference_extract_matches_sequential(tmp_path) -> None:
    pytest.importorskip("dlib")
    sizes = [(96, 80), (128, 96), (160, 120)]  # different pyramids per size: what broke a shared detector
    paths = [make_video(tmp_path / f"face{w}.mp4", frames=6, size=(w, h)) for w, h in sizes]
    cfg = reference.ReferencePreprocess(frames=4)
    expected = {str(p): reference.reference_extract(p, cfg) for p in paths}
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda p: (str(p), reference.reference_extract(p, cfg)), paths * 4))
    for path, res in got:
        want = expected[path]
        assert res.status == want.status and res.face_ratio == want.face_ratio
        np.testing.assert_array_equal(res.clip, want.clip)
