"""Face detectors, the one-subject tracker and the square cropper, on real faces."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from deepfake_detector.data.faces import (
    Box,
    CenterDetector,
    DlibDetector,
    FaceCropper,
    FaceDetector,
    detector_available,
    get_detector,
    iou,
    square_crop,
)
from deepfake_detector.data.video import read_frames
from tests.helpers import carphone_frames

# the astronaut's face in scikit-image's 512x512 photo (checked by eye): centre and size
ASTRO_CX, ASTRO_CY, ASTRO_SIDE = 220, 125, 110


def _near(box: Box, cx: float, cy: float, side: float, tol: float = 0.35) -> bool:
    return abs(box.cx - cx) < tol * side and abs(box.cy - cy) < tol * side and 0.5 < box.side / side < 2.0


def test_registry():
    assert isinstance(get_detector("dlib"), DlibDetector)
    assert get_detector("haar").name == "haar"
    assert isinstance(get_detector("center"), CenterDetector)
    with pytest.raises(ValueError, match="unknown face detector"):
        get_detector("retinaface")  # mtcnn is registered (tests/data/test_mtcnn.py)
    assert detector_available("haar") is None
    assert detector_available("nope") is not None


@pytest.mark.parametrize("name", ["dlib", "haar"])
def test_detectors_find_the_astronaut(astronaut, name):
    boxes = get_detector(name).detect(astronaut)
    assert boxes, f"{name} found no face"
    best = max(boxes, key=lambda b: b.side)
    assert _near(best, ASTRO_CX, ASTRO_CY, ASTRO_SIDE), best


def test_detectors_find_nothing_in_a_flat_image():
    flat = np.full((240, 320, 3), 128, np.uint8)
    assert get_detector("dlib").detect(flat) == []
    assert get_detector("haar").detect(flat) == []


def test_detector_boxes_are_in_source_coordinates(astronaut):
    """Detection runs on a down-scaled copy; boxes must come back in the frame's own pixels."""
    import cv2

    big = cv2.resize(astronaut, (1024, 1024))
    det = get_detector("dlib", detect_max_side=256, upsample=1)
    boxes = det.detect(big)
    assert boxes
    assert _near(max(boxes, key=lambda b: b.side), 2 * ASTRO_CX, 2 * ASTRO_CY, 2 * ASTRO_SIDE)


def test_dlib_search_plan_uses_the_size_hint():
    det = DlibDetector(detect_max_side=640, upsample=1, coarse_side=320)
    plan = det.plan((720, 1280, 3))
    assert plan[0] == (0.25, 0) and plan[-1] == (0.5, 1)  # coarse first, up-sampled last
    hinted = det.plan((720, 1280, 3), hint=300.0)
    assert hinted[0][1] == 0 and hinted[0][0] == pytest.approx(1 / 3)  # face searched at ~100 px
    small = det.plan((144, 176, 3), hint=50.0)
    assert small[0] == (1.0, 1)  # a 50 px face needs up-sampling


def test_detectors_pickle_without_native_state(astronaut):
    for name in ("dlib", "haar", "center"):
        det = get_detector(name)
        det.detect(astronaut)  # builds the native detector
        clone = pickle.loads(pickle.dumps(det))
        assert isinstance(clone, FaceDetector)
        assert clone.detect(astronaut)


def test_cropper_on_real_face_video(carphone):
    """The cropper on the real carphone video: face found in most frames, crops centred near the face
    that dlib finds on the full-resolution frame."""
    import dlib

    sampled = read_frames(carphone, 20)
    cropper = FaceCropper(get_detector("dlib"), size=64, margin=0.3)
    res = cropper.crop(sampled.frames)
    assert res.found
    assert res.face_ratio >= 0.85
    assert res.crops.shape == (20, 64, 64, 3) and res.crops.dtype == np.uint8
    full = dlib.get_frontal_face_detector()
    checked = 0
    for frame, box in zip(sampled.frames, res.boxes):
        rects = full(frame, 1)
        if not len(rects):
            continue
        r = max(rects, key=lambda r: r.width())
        side = max(r.width(), r.height())
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        crop_side = box[2] - box[0]
        # square crop of side ~ face*(1+margin), centred near the face (it may shift to stay inside the frame)
        assert abs(cx - (r.left() + r.right()) / 2) < 0.35 * side
        assert abs(cy - (r.top() + r.bottom()) / 2) < 0.35 * side
        assert 1.0 * side < crop_side < 1.8 * side
        checked += 1
    assert checked >= 15


def test_cropper_keeps_one_subject_and_fills_gaps():
    frames = [np.zeros((200, 300, 3), np.uint8) for _ in range(7)]
    subject = [Box(100 + 3 * t, 50, 160 + 3 * t, 110, 1.0) for t in range(7)]
    dets: list[list[Box]] = [[b] for b in subject]
    dets[3] = []  # missed detection
    dets[5] = [subject[5], Box(0, 0, 120, 120, 2.0)]  # a bigger, one-off false positive
    res = FaceCropper(CenterDetector(), size=32, margin=0.0, smooth=1).crop(frames, dets)
    res = FaceCropper(get_detector("haar"), size=32, margin=0.0, smooth=1).crop(frames, dets)
    assert res.found
    assert res.detected.tolist() == [True, True, True, False, True, True, True]
    assert res.face_ratio == pytest.approx(6 / 7)
    centres = (res.boxes[:, 0] + res.boxes[:, 2]) / 2
    # the gap is interpolated and the outlier ignored
    assert np.allclose(centres, [130 + 3 * t for t in range(7)], atol=1.5)


def test_cropper_no_face_gives_centre_crops():
    frames = [np.full((60, 100, 3), 50, np.uint8) for _ in range(3)]
    res = FaceCropper(get_detector("haar"), size=32).crop(frames)
    assert not res.found and res.face_ratio == 0.0
    assert res.crops.shape == (3, 32, 32, 3)
    assert res.boxes[0].tolist() == [20, 0, 80, 60]


def test_center_detector_is_ok_but_reports_no_detection():
    frames = [np.full((60, 100, 3), 50, np.uint8) for _ in range(2)]
    res = FaceCropper(get_detector("center"), size=16).crop(frames)
    assert res.found and res.face_ratio == 0.0


def test_square_crop_pads_at_borders():
    img = np.full((50, 80, 3), 200, np.uint8)
    crop, box = square_crop(img, 5, 5, 40, 20)  # shifted inside: no padding needed
    assert crop.shape == (20, 20, 3) and (crop == 200).all()
    assert box.tolist() == [0, 0, 40, 40]
    crop, box = square_crop(img, 40, 25, 100, 50)  # larger than the frame: black padding, still square
    assert crop.shape == (50, 50, 3)
    assert (crop[0] == 0).all() and (crop[25, 25] == 200).all()
    assert box[2] - box[0] == box[3] - box[1] == 100


def test_iou():
    a = Box(0, 0, 10, 10)
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, Box(5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou(a, Box(20, 20, 30, 30)) == 0.0


def test_carphone_frames_helper_is_real_footage():
    frames = carphone_frames(5)
    assert len(frames) == 5 and frames[0].shape == (144, 176, 3)


def test_native_detectors_are_per_thread_and_agree_in_parallel():
    """dlib's and OpenCV's detectors keep scratch buffers: one shared by threads corrupted the heap
    (``serve --workers 2`` died with SIGSEGV). Each thread now gets its own; results are unchanged."""
    import threading

    import cv2

    frames = carphone_frames(4)
    sizes = [(176, 144), (240, 196), (128, 104), (320, 262)]  # dlib rebuilds its pyramid per size
    images = [cv2.resize(f, s) for f, s in zip(frames, sizes)]
    for name in ("dlib", "haar"):
        det = get_detector(name)
        expected = [[b.as_array().tolist() for b in det.detect(img)] for img in images]
        natives: dict[int, set] = {}
        results: list = []
        errors: list = []

        def work(k: int, det=det, natives=natives, results=results, errors=errors) -> None:
            try:
                ids = {id(det.native), id(det.native)}
                natives[threading.get_ident()] = ids
                for i in range(12):
                    j = (k + i) % len(images)
                    results.append((j, [b.as_array().tolist() for b in det.detect(images[j])]))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert all(len(ids) == 1 for ids in natives.values())  # one native per thread, reused
        assert len(set().union(*natives.values())) == 4  # and not shared between threads
        assert all(boxes == expected[j] for j, boxes in results), name
        clone = pickle.loads(pickle.dumps(det))  # still picklable, and builds its own native
        assert [b.as_array().tolist() for b in clone.detect(images[0])] == expected[0]
