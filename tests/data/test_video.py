"""Video reading and frame sampling: even spacing across the whole video, sparse decoding that gives
the same pixels as a full decode, wrong headers, VFR, rotation, caps and bad files."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfake_detector.data.video import (
    DecodeTimeout,
    NoFramesError,
    VideoError,
    VideoRefused,
    probe,
    read_frames,
    rotate_upright,
    sample_by_time,
    sample_indices,
)
from tests.helpers import make_video, read_index

# ---------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------


def test_sample_indices_are_segment_centres():
    assert sample_indices(100, 10) == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert sample_indices(300, 3) == [50, 150, 250]
    # the whole video, not the first frames
    assert sample_indices(1000, 4)[-1] > 800


def test_sample_indices_short_and_empty():
    assert sample_indices(3, 10) == [0, 1, 2]
    assert sample_indices(10, 10) == list(range(10))
    assert sample_indices(0, 5) == []
    assert sample_indices(-4, 5) == []
    assert sample_indices(1, 20) == [0]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 100_000), k=st.integers(1, 300))
def test_sample_indices_properties(n, k):
    idx = sample_indices(n, k)
    assert idx == sample_indices(n, k)  # deterministic
    assert len(idx) == min(max(n, 0), k)
    assert idx == sorted(set(idx))
    assert all(0 <= i < n for i in idx)
    if n > k:
        # frame i is shown on [i, i+1): it holds the centre of the j-th of k equal segments
        for j, i in enumerate(idx):
            centre = (2 * j + 1) * n / (2 * k)
            assert i <= centre < i + 1


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), k=st.integers(1, 64), fps=st.sampled_from([15.0, 24.0, 25.0, 29.97, 60.0]))
def test_sample_by_time_equals_index_sampling_at_constant_rate(n, k, fps):
    times = np.arange(n) / fps
    assert sample_by_time(times, k) == sample_indices(n, k)


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.floats(0.001, 2.0), min_size=1, max_size=400), k=st.integers(1, 40))
def test_sample_by_time_vfr_gives_k_distinct_frames(gaps, k):
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    idx = sample_by_time(times, k)
    assert idx == sorted(set(idx))
    assert len(idx) == min(len(times), k)
    assert all(0 <= i < len(times) for i in idx)


def test_sample_by_time_follows_presentation_time():
    # 10 frames in the first 0.1 s, then one frame per second: time-even sampling favours the long part
    times = np.concatenate([np.arange(10) * 0.01, 1.0 + np.arange(10)])
    idx = sample_by_time(times, 4)
    assert len(idx) == 4
    assert sum(i >= 10 for i in idx) >= 3


def test_rotate_upright():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 0] = 255  # top-left marker
    assert rotate_upright(img, 0) is img
    r90 = rotate_upright(img, 90)  # counter-clockwise: top-left goes to bottom-left
    assert r90.shape == (3, 2, 3) and r90[2, 0, 0] == 255
    r270 = rotate_upright(img, -90)  # clockwise: top-left goes to top-right
    assert r270.shape == (3, 2, 3) and r270[0, 1, 0] == 255
    assert rotate_upright(img, 180)[1, 2, 0] == 255


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _full_decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize(
    "name,codec,kw",
    [
        ("long_gop.mp4", "libx264", {}),
        ("gop5.mp4", "libx264", {"gop": 5}),
        ("bframes.mp4", "libx264", {"gop": 12, "options": {"preset": "medium", "crf": "18"}}),
        ("intra.avi", "mjpeg", {}),
        ("vp9.webm", "libvpx-vp9", {}),
        ("mpeg4.mkv", "mpeg4", {}),
    ],
)
def test_read_frames_picks_evenly_spaced_frames(tmp_path, name, codec, kw):
    path = make_video(tmp_path / name, frames=60, size=(96, 64), codec=codec, face=False, **kw)
    s = read_frames(path, 6)
    expected = sample_indices(60, 6)
    assert s.indices == expected
    # the pixels say which frame it really is
    assert [read_index(f) for f in s.frames] == expected
    assert s.info.frames == 60
    assert all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in s.frames)
    assert s.decoded <= 60


def test_sparse_decoding_gives_the_pixels_of_a_full_decode(carphone):
    s = read_frames(carphone, 9)
    full = _full_decode(carphone)
    assert s.indices == sample_indices(len(full), 9)
    for i, frame in zip(s.indices, s.frames):
        np.testing.assert_array_equal(frame, full[i])
    assert s.decoded < len(full)  # frames after the last target and skippable ones were not decoded


def test_seeking_on_short_gop_matches_full_decode(tmp_path):
    path = make_video(tmp_path / "g.mp4", frames=150, size=(96, 64), face=False, gop=10,
                      options={"preset": "medium", "crf": "20"})
    s = read_frames(path, 5)
    assert s.seeks >= 1
    assert s.decoded < 150
    full = _full_decode(path)
    for i, frame in zip(s.indices, s.frames):
        np.testing.assert_array_equal(frame, full[i])


def test_short_video_gives_every_frame(tmp_path):
    path = make_video(tmp_path / "short.mp4", frames=3, size=(64, 64), face=False)
    s = read_frames(path, 20)
    assert s.indices == [0, 1, 2]
    assert [read_index(f) for f in s.frames] == [0, 1, 2]


def test_one_frame_video(tmp_path):
    path = make_video(tmp_path / "one.mp4", frames=1, size=(64, 64), face=False)
    s = read_frames(path, 20)
    assert s.indices == [0] and len(s.frames) == 1


def test_container_without_frame_count(tmp_path):
    # Matroska/WebM headers carry no frame count: the frame table comes from a demux pass
    path = make_video(tmp_path / "v.webm", frames=40, size=(64, 64), codec="libvpx-vp9", face=False)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0
    s = read_frames(path, 4)
    assert s.info.frames == 40 and s.info.frames_source == "demux"
    assert [read_index(f) for f in s.frames] == sample_indices(40, 4)


def test_header_claims_more_frames_than_decodable(tmp_path):
    # index first (faststart), then cut the file: the header says 60 frames, far fewer exist
    full = make_video(tmp_path / "fs.mp4", frames=60, size=(96, 64), face=False,
                      container_options={"movflags": "faststart"})
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(cut).header_frames == 60
    s = read_frames(cut, 10)
    real = s.info.frames
    assert 5 < real < 60 and s.info.frames_source == "decode"
    # re-planned evenly over what really exists, not bunched at the end
    assert s.indices == sample_indices(real, 10)
    assert [read_index(f) for f in s.frames] == s.indices


def test_no_decodable_frame_is_too_short(tmp_path):
    full = make_video(tmp_path / "fs.mp4", frames=30, size=(96, 64), face=False,
                      container_options={"movflags": "faststart"})
    data = full.read_bytes()
    cut = tmp_path / "empty.mp4"
    cut.write_bytes(data[: data.find(b"mdat") + 20])
    with pytest.raises(NoFramesError) as info:
        read_frames(cut, 5)
    assert info.value.status == "too_short"


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    # 20 frames crammed in the first 0.2 s, then 10 frames one second apart
    pts = [i * 10 for i in range(20)] + [1000 * (i + 1) for i in range(10)]
    path = make_video(tmp_path / "vfr.mp4", frames=30, size=(96, 64), face=False, pts=pts)
    s = read_frames(path, 5)
    got = [read_index(f) for f in s.frames]
    assert got == s.indices
    assert sum(i >= 20 for i in got) >= 4  # most samples come from the long-lived part
    assert s.times == sorted(s.times) and s.times[-1] > 5.0


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    import cv2

    path = make_video(tmp_path / "rot.mp4", frames=4, size=(96, 64), face=False, rotation=rotation)
    s = read_frames(path, 2)
    assert s.info.rotation == rotation
    want_shape = (96, 64, 3) if rotation % 180 else (64, 96, 3)
    assert s.frames[0].shape == want_shape
    # OpenCV applies the display matrix itself: our upright frame must match its frame best
    cap = cv2.VideoCapture(str(path))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(int)
    ours = s.frames[0].astype(int)
    errs = {k: np.abs(np.rot90(ours, k) - ref).mean()
            for k in range(4) if np.rot90(ours, k).shape == ref.shape}
    assert min(errs, key=errs.get) == 0


def test_decoded_resolution_cap(tmp_path):
    path = make_video(tmp_path / "big.mp4", frames=6, size=(320, 240), face=False)
    s = read_frames(path, 3, max_side=160)
    assert s.frames[0].shape == (120, 160, 3)
    assert s.scale == pytest.approx(0.5)


def test_absurd_size_is_refused(tmp_path):
    path = make_video(tmp_path / "big.mp4", frames=4, size=(320, 240), face=False)
    with pytest.raises(VideoRefused) as info:
        read_frames(path, 3, max_pixels=320 * 240 - 1)
    assert info.value.status == "refused"


def test_absurd_declared_size_is_named_not_an_ffmpeg_errno(tmp_path):
    """FFmpeg refuses a 60000x60000 y4m header at open with EBUSY ("Device or resource busy"); the
    error must say what is wrong with the file, for read_frames and probe alike, and OpenCV (FFmpeg
    again) is not tried."""
    from tests.corpus import write_y4m_header_lie

    path = write_y4m_header_lie(tmp_path / "absurd.y4m", 60000, 60000)
    for call in (lambda: read_frames(path, 3), lambda: probe(path)):
        with pytest.raises(VideoError) as info:
            call()
        msg = str(info.value)
        assert info.value.status == "unreadable", msg
        assert "frame size 60000x60000 exceeds the limit of 16777216 pixels (4096x4096, max_pixels)" in msg
        assert "busy" not in msg.lower() and "errno" not in msg.lower(), msg
    # a cap raised past it: FFmpeg's own limit is what stops it, and the message says so
    with pytest.raises(VideoError, match=r"frame size 60000x60000 is larger than the decoder \(FFmpeg\)"):
        read_frames(path, 3, max_pixels=10**10)
    # a declared size inside both limits reaches the stream check as before
    small = write_y4m_header_lie(tmp_path / "big.y4m", 8192, 8192)
    with pytest.raises(VideoRefused, match="frame size 8192x8192 exceeds the limit of 16777216 pixels"):
        read_frames(small, 3)


def test_meaningless_ffmpeg_errno_is_not_shown_as_a_file_problem(tmp_path, monkeypatch):
    """Whatever header makes FFmpeg answer with an errno unrelated to files, the message does not
    pretend the device is busy."""
    from deepfake_detector.data import video
    from tests.corpus import write_y4m_header_lie

    monkeypatch.setattr(video, "declared_frame_size", lambda path: None)  # as for a header we cannot parse
    path = write_y4m_header_lie(tmp_path / "absurd.y4m", 60000, 60000)
    with pytest.raises(VideoError) as info:
        read_frames(path, 3, backend="av")
    assert info.value.status == "unreadable"
    assert str(info.value) == "cannot open: invalid or unsupported data (FFmpeg error code EBUSY)"


def test_declared_frame_size_and_ffmpeg_limit(tmp_path):
    from deepfake_detector.data.video import declared_frame_size, ffmpeg_accepts_size
    from tests.corpus import write_y4m_header_lie

    assert declared_frame_size(write_y4m_header_lie(tmp_path / "a.y4m", 60000, 123)) == (60000, 123)
    assert declared_frame_size(make_video(tmp_path / "v.mp4", frames=2, size=(64, 64), face=False)) is None
    (tmp_path / "bad.y4m").write_bytes(b"YUV4MPEG2 Wabc H10\n")
    assert declared_frame_size(tmp_path / "bad.y4m") is None
    assert declared_frame_size(tmp_path / "nope.y4m") is None
    assert ffmpeg_accepts_size(8192, 8192) and ffmpeg_accepts_size(16000, 16000)
    assert not ffmpeg_accepts_size(16384, 16384) and not ffmpeg_accepts_size(60000, 60000)
    assert not ffmpeg_accepts_size(0, 10)


def test_duration_cap(tmp_path):
    path = make_video(tmp_path / "long.mp4", frames=100, fps=25, size=(64, 64), face=False)
    s = read_frames(path, 5, max_duration_s=1.0)
    assert max(s.indices) <= 25
    assert [read_index(f) for f in s.frames] == s.indices


def test_deadline(tmp_path):
    path = make_video(tmp_path / "v.mp4", frames=30, size=(64, 64), face=False)
    with pytest.raises(DecodeTimeout):
        read_frames(path, 5, deadline_s=1e-9)


def test_opencv_backend_agrees(tmp_path):
    path = make_video(tmp_path / "v.mp4", frames=40, size=(96, 64), face=False)
    s = read_frames(path, 5, backend="cv2")
    assert s.backend == "cv2"
    assert s.indices == sample_indices(40, 5)
    assert [read_index(f) for f in s.frames] == s.indices


def test_probe(carphone):
    info = probe(carphone)
    assert info.frames == 120
    assert (info.width, info.height) == (176, 144)
    assert info.fps == pytest.approx(29.97, abs=0.01)
    assert info.duration == pytest.approx(4.0, abs=0.05)
    assert info.rotation == 0
    assert info.codec == "h264" and info.keyframes >= 1


@pytest.mark.parametrize("kind", ["zero", "random", "png", "truncated", "audio", "text"])
def test_bad_files_raise_video_error(bad_videos, kind):
    with pytest.raises(VideoError) as info:
        read_frames(bad_videos[kind], 5)
    assert info.value.status == "unreadable"
    with pytest.raises(VideoError):
        probe(bad_videos[kind])


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(VideoError, match="does not exist"):
        read_frames(tmp_path / "nope.mp4", 3)
    with pytest.raises(VideoError, match="directory"):
        read_frames(tmp_path, 3)


def test_mutated_mp4_never_crashes(tmp_path):
    """A short fuzz: flipped bytes inside a valid mp4 give frames or a VideoError, never anything else."""
    src = make_video(tmp_path / "src.mp4", frames=20, size=(64, 48), face=False).read_bytes()
    rng = np.random.default_rng(0)
    for i in range(25):
        data = bytearray(src)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 40))):
            data[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"m{i}.mp4"
        path.write_bytes(bytes(data))
        try:
            s = read_frames(path, 4, deadline_s=20)
        except VideoError:
            continue
        assert all(f.dtype == np.uint8 and f.ndim == 3 for f in s.frames)
