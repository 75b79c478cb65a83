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
    read_windows,
    rotate_upright,
    sample_by_time,
    sample_frames,
    sample_indices,
    sample_snippets,
    segment_windows,
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


# ---------------------------------------------------------------------------------------------
# samplers by name: snippets of consecutive frames; time windows (predict --segments)
# ---------------------------------------------------------------------------------------------


def _runs(idx: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive ordinals."""
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def test_sampler_registry_matches_the_config_names():
    from deepfake_detector.config import SAMPLINGS
    from deepfake_detector.data.video import SAMPLERS

    assert tuple(SAMPLERS) == SAMPLINGS
    with pytest.raises(ValueError, match="unknown sampling"):
        sample_frames(np.arange(10.0), 4, sampling="random")


def test_snippets_are_consecutive_and_spread_over_the_whole_video():
    idx = sample_snippets(np.arange(100) / 25.0, 20, 4)
    assert idx == [10, 11, 12, 13, 30, 31, 32, 33, 50, 51, 52, 53, 70, 71, 72, 73, 90, 91, 92, 93]
    # each snippet starts at the frame the even sampler picks for its segment
    assert [r[0] for r in _runs(idx)] == sample_by_time(np.arange(100) / 25.0, 5)
    assert sample_frames(np.arange(100.0), 20, sampling="snippets", snippet_len=4) == idx
    # the even sampler by name is today's sampler
    assert sample_frames(np.arange(100.0), 5) == sample_indices(100, 5)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 3000), snippets=st.integers(1, 8), length=st.integers(1, 8))
def test_snippet_properties(n, snippets, length):
    k = snippets * length
    idx = sample_snippets(np.arange(n) / 30.0, k, length)
    assert idx == sorted(set(idx)) and all(0 <= i < n for i in idx)
    if n <= k:
        assert idx == list(range(n))  # short videos: every frame, like the even sampler
        return
    assert len(idx) == k
    starts = [idx[j] for j in range(0, k, length)]
    assert all(idx[j:j + length] == list(range(s, s + length)) for j, s in zip(range(0, k, length), starts))
    # spread over the whole video: the first snippet starts in the first segment, the last ends in the last
    assert starts[0] < n / snippets + 1 and idx[-1] >= n - n / snippets - 1


def test_snippets_under_variable_frame_rate_are_anchored_by_time():
    # 40 frames crammed in the first 0.4 s, then 20 frames one second apart
    times = np.concatenate([np.arange(40) * 0.01, 1.0 + np.arange(20)])
    idx = sample_snippets(times, 8, 2)
    assert [r[0] for r in _runs(idx)] == sample_by_time(times, 4)
    assert sum(i >= 40 for i in idx) >= 6  # most of the time line is the slow part
    assert all(len(r) % 2 == 0 for r in _runs(idx))


def test_snippets_at_the_end_are_clamped():
    # one snippet of 6 anchored at the centre of a 10-frame video runs past the end: pushed back
    assert sample_snippets(np.arange(10.0), 6, 6) == [4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="multiple of snippet_len"):
        sample_snippets(np.arange(10.0), 6, 4)


def test_read_frames_with_snippets_decodes_consecutive_frames(tmp_path):
    path = make_video(tmp_path / "g.mp4", frames=120, size=(96, 64), face=False, gop=12,
                      options={"preset": "medium", "crf": "20"})
    s = read_frames(path, 12, sampling="snippets", snippet_len=4)
    assert s.indices == [20, 21, 22, 23, 60, 61, 62, 63, 100, 101, 102, 103]
    assert [read_index(f) for f in s.frames] == s.indices  # the pixels say which frame it really is
    full = _full_decode(path)
    for i, frame in zip(s.indices, s.frames):
        np.testing.assert_array_equal(frame, full[i])
    cv = read_frames(path, 12, sampling="snippets", snippet_len=4, backend="cv2")
    assert cv.indices == s.indices
    with pytest.raises(ValueError, match="multiple"):
        read_frames(path, 10, sampling="snippets", snippet_len=4)


def test_read_frames_with_snippets_on_vfr_and_short_videos(tmp_path):
    pts = [i * 10 for i in range(20)] + [1000 * (i + 1) for i in range(10)]
    vfr = make_video(tmp_path / "vfr.mp4", frames=30, size=(96, 64), face=False, pts=pts)
    s = read_frames(vfr, 6, sampling="snippets", snippet_len=3)
    got = [read_index(f) for f in s.frames]
    assert got == s.indices and len(got) == 6
    assert all(len(r) % 3 == 0 for r in _runs(got)) and got[-1] >= 20
    short = make_video(tmp_path / "short.mp4", frames=5, size=(64, 64), face=False)
    assert read_frames(short, 8, sampling="snippets", snippet_len=4).indices == [0, 1, 2, 3, 4]


def test_segment_windows_boundaries_and_bound():
    assert segment_windows(25.0, 10.0, 64) == ([(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)], 10.0)
    # a remainder under half a window joins the window before: no sliver windows
    assert segment_windows(24.0, 10.0, 64) == ([(0.0, 10.0), (10.0, 24.0)], 10.0)
    assert segment_windows(4.0, 10.0, 64) == ([(0.0, 4.0)], 10.0)
    assert segment_windows(0.0, 10.0, 64) == ([], 10.0)
    # long videos: at most max_windows windows, each wider than asked (and the width says so)
    spans, width = segment_windows(3600.0, 10.0, 64)
    assert len(spans) == 64 and width == pytest.approx(56.25)
    assert spans[0][0] == 0.0 and spans[-1][1] == 3600.0
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@settings(max_examples=200, deadline=None)
@given(duration=st.floats(0.05, 20000.0), seconds=st.floats(0.1, 100.0), most=st.integers(1, 100))
def test_segment_windows_properties(duration, seconds, most):
    spans, width = segment_windows(duration, seconds, most)
    assert 1 <= len(spans) <= most and width >= seconds
    assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(duration, abs=1e-5)
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:]))


def test_read_windows_samples_each_window_like_a_clip(tmp_path):
    # 10 s at 25 fps, GOP 1 s: windows of 2 s; each one's frames come from inside it
    path = make_video(tmp_path / "long.mp4", frames=250, size=(96, 64), face=False, gop=25)
    windows = list(read_windows(path, 4, seconds=2.0, max_windows=64))
    assert [w.window for w in windows] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0), (8.0, 10.0)]
    assert all(w.window_s == 2.0 for w in windows)
    for w in windows:
        start, end = w.window
        assert w.indices == [int(start * 25) + i for i in sample_indices(50, 4)]
        assert [read_index(f) for f in w.frames] == [i % 256 for i in w.indices]
        assert all(start - 1e-6 <= t < end for t in w.times)
    assert windows[-1].decoded <= 250  # one forward pass over the file, not one per window
    snippets = list(read_windows(path, 4, seconds=5.0, max_windows=64, sampling="snippets", snippet_len=2))
    assert [w.indices for w in snippets] == [[31, 32, 93, 94], [156, 157, 218, 219]]
    # the bound: 3 windows at most, so each is wider than asked
    wide = list(read_windows(path, 4, seconds=1.0, max_windows=3))
    assert len(wide) == 3 and wide[0].window_s == pytest.approx(10 / 3)


def test_read_windows_skips_empty_windows_in_variable_frame_rate(tmp_path):
    # frames at 0-0.9 s, then a 5 s gap, then frames at 6-6.9 s: the windows in the gap have no frames
    pts = [100 * i for i in range(10)] + [6000 + 100 * i for i in range(10)]
    path = make_video(tmp_path / "gap.mp4", frames=20, size=(96, 64), face=False, pts=pts)
    windows = list(read_windows(path, 2, seconds=1.0, max_windows=64))
    assert [w.window[0] for w in windows] == [0.0, 6.0]
    assert [read_index(f) for f in windows[1].frames] == windows[1].indices and windows[1].indices[0] >= 10


def test_read_windows_errors_are_video_errors(tmp_path, bad_videos):
    with pytest.raises(VideoError):
        list(read_windows(bad_videos["random"], 4, seconds=1.0, max_windows=4))
    with pytest.raises(VideoError, match="does not exist"):
        list(read_windows(tmp_path / "nope.mp4", 4, seconds=1.0, max_windows=4))
