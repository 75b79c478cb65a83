"""The bad-input corpus: every kind of broken, odd or hostile video file a real dataset or upload holds.

Reusable by every stage's tests (preprocess, predict, serve)::

    from tests.corpus import build_corpus
    items = build_corpus(tmp_path)              # {name: CorpusItem}
    for item in items.values():
        res = extract_clip(item.path, cfg)
        assert res.status in item.expect

Each ``CorpusItem`` says which statuses are acceptable (``expect``) and whether a clip must come out
(``usable``). Items that cannot be made on this machine (no AAC encoder, a file system without
non-UTF-8 names) are left out and listed in ``skipped`` of ``build_corpus(..., report=...)``.

The MP4 patchers (``patch_rotation``, ``patch_dimensions``, ``patch_sample_count``,
``corrupt_mdat``) edit box fields of a file PyAV wrote, which is the form these defects take in the
wild (phone videos carry rotation in the ``tkhd`` matrix; broken muxers write wrong counts).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from tests.helpers import make_audio_only, make_bad_file, make_video

PathLike = Union[str, os.PathLike]

BAD = ("unreadable", "too_short", "refused", "error", "missing")
GOOD = ("ok", "no_face")
ALL_STATUSES = ("ok", "no_face", "unreadable", "too_short", "refused", "missing", "error")

# Every item build_corpus can make, in order (for pytest parametrisation before the files exist).
CORPUS_NAMES = (
    "face", "zero_bytes", "random_bytes", "png_as_mp4", "text_as_mp4", "truncated", "header_only",
    "audio_only",
    "one_frame", "no_face", "rotated_tkhd", "rotated_side_data", "vfr", "huge_dims_y4m", "absurd_dims_y4m",
    "huge_dims_mp4", "huge_frame_count", "duration_lie", "corrupt_middle", "space_name", "unicode_name",
    "non_utf8_name", "unreadable", "symlink_loop", "dangling_link", "missing", "directory", "named_pipe",
)

# Items whose file name is not plain ASCII (and may not be representable everywhere).
NON_UTF8_NAME = b"caf\xe9 \xff broken-utf8.mp4"


@dataclass
class CorpusItem:
    """One corpus file and what a well-behaved reader must say about it."""

    name: str
    path: str  # str (non-UTF-8 names are surrogate-escaped, as os.fsdecode gives them)
    expect: tuple[str, ...]  # acceptable statuses
    usable: bool = False  # a clip must come out (status ok / no_face)
    note: str = ""
    checks: dict = field(default_factory=dict)  # extra facts tests may assert (e.g. display size)

    @property
    def bad(self) -> bool:
        return not self.usable


# --------------------------------------------------------------------------------------------------
# MP4 box walking and patching
# --------------------------------------------------------------------------------------------------

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}


def iter_boxes(data: bytes, start: int = 0, end: Optional[int] = None, depth: int = 0):
    """Yield ``(type, offset, header_size, size, depth)`` for every box, descending into containers
    (and into ``stsd`` sample entries)."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        hdr = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
            hdr = 16
        elif size == 0:
            size = end - pos
        if size < hdr or pos + size > end:
            return
        yield kind, pos, hdr, size, depth
        if kind in _CONTAINERS:
            yield from iter_boxes(data, pos + hdr, pos + size, depth + 1)
        elif kind == b"stsd":  # full box + entry count, then sample entries (boxes)
            yield from iter_boxes(data, pos + hdr + 8, pos + size, depth + 1)
        pos += size


def find_box(data: bytes, kind: bytes) -> tuple[int, int, int]:
    """``(offset, header_size, size)`` of the first box of that type (KeyError when absent)."""
    for k, off, hdr, size, _ in iter_boxes(data):
        if k == kind:
            return off, hdr, size
    raise KeyError(kind.decode())


def _tkhd_fields(data: bytes) -> tuple[int, int]:
    """Offsets of the tkhd matrix and of its width field (first video track: the only one we write)."""
    off, hdr, _ = find_box(data, b"tkhd")
    body = off + hdr
    version = data[body]
    # version 1: creation, modification (8+8), track id (4), reserved (4), duration (8)
    head = 4 + (8 + 8 + 4 + 4 + 8 if version == 1 else 4 + 4 + 4 + 4 + 4)
    matrix = body + head + 8 + 2 + 2 + 2 + 2  # reserved(8) layer alt_group volume reserved
    return matrix, matrix + 36


def rotation_matrix(degrees: int, w: int, h: int) -> bytes:
    """The 3x3 tkhd display matrix (16.16, 16.16, 2.30 fixed point) of a clockwise rotation."""
    one, w16, h16 = 1 << 16, w << 16, h << 16
    mats = {
        0: (one, 0, 0, 0, one, 0, 0, 0, 1 << 30),
        90: (0, one, 0, -one, 0, 0, h16, 0, 1 << 30),
        180: (-one, 0, 0, 0, -one, 0, w16, h16, 1 << 30),
        270: (0, -one, 0, one, 0, 0, 0, w16, 1 << 30),
    }
    return struct.pack(">9i", *mats[degrees % 360])


def patch_rotation(src: PathLike, dst: PathLike, degrees: int = 90) -> Path:
    """Copy an mp4 with its video track's ``tkhd`` matrix set to a rotation (as phones write it)."""
    data = bytearray(Path(src).read_bytes())
    matrix, wh = _tkhd_fields(bytes(data))
    w = struct.unpack(">I", data[wh:wh + 4])[0] >> 16
    h = struct.unpack(">I", data[wh + 4:wh + 8])[0] >> 16
    data[matrix:matrix + 36] = rotation_matrix(degrees, w, h)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def patch_dimensions(src: PathLike, dst: PathLike, width: int, height: int) -> Path:
    """Copy an mp4 whose ``tkhd`` and ``avc1`` sample entry claim ``width`` x ``height``."""
    data = bytearray(Path(src).read_bytes())
    _, wh = _tkhd_fields(bytes(data))
    data[wh:wh + 8] = struct.pack(">II", (width & 0xFFFF) << 16, (height & 0xFFFF) << 16)
    for kind in (b"avc1", b"mp4v", b"hev1", b"hvc1"):
        try:
            off, hdr, _ = find_box(bytes(data), kind)
        except KeyError:
            continue
        # VisualSampleEntry: reserved(6) data_ref_index(2) pre_defined/reserved(16) width(2) height(2)
        pos = off + hdr + 6 + 2 + 16
        data[pos:pos + 4] = struct.pack(">HH", width & 0xFFFF, height & 0xFFFF)
        break
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def patch_sample_count(src: PathLike, dst: PathLike, count: int = 0x7FFFFFF0) -> Path:
    """Copy an mp4 whose ``stsz`` (and ``mdhd`` duration) claim an absurd number of frames."""
    data = bytearray(Path(src).read_bytes())
    off, hdr, _ = find_box(bytes(data), b"stsz")
    body = off + hdr  # version/flags(4) sample_size(4) sample_count(4)
    data[body + 8:body + 12] = struct.pack(">I", count)
    try:
        moff, mhdr, _ = find_box(bytes(data), b"mdhd")
        mb = moff + mhdr
        if data[mb] == 0:  # v0: flags(4) creation(4) modification(4) timescale(4) duration(4)
            data[mb + 16:mb + 20] = struct.pack(">I", 0xFFFFFFF0)
    except KeyError:
        pass
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def patch_duration(src: PathLike, dst: PathLike, duration: int = 0xFFFFFFF0) -> Path:
    """Copy an mp4 whose ``mvhd``/``mdhd``/``tkhd`` durations claim years (frames are unchanged)."""
    data = bytearray(Path(src).read_bytes())
    for kind, at in ((b"mvhd", 16), (b"mdhd", 16), (b"tkhd", 20)):
        try:
            off, hdr, _ = find_box(bytes(data), kind)
        except KeyError:
            continue
        if data[off + hdr] == 0:  # version 0 layout only (what PyAV writes for short files)
            data[off + hdr + at:off + hdr + at + 4] = struct.pack(">I", duration)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def corrupt_mdat(src: PathLike, dst: PathLike, start: float = 0.4, length: float = 0.2,
                 seed: int = 0) -> Path:
    """Copy an mp4 with a span of its ``mdat`` payload (the middle of the stream) overwritten with noise."""
    data = bytearray(Path(src).read_bytes())
    off, hdr, size = find_box(bytes(data), b"mdat")
    payload = size - hdr
    a = off + hdr + int(payload * start)
    n = max(16, int(payload * length))
    data[a:a + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def write_y4m_header_lie(path: PathLike, width: int = 8192, height: int = 8192, frames: int = 2) -> Path:
    """A raw YUV4MPEG2 stream whose header claims ``width`` x ``height`` but carries a few bytes.

    8192x8192 is inside what FFmpeg accepts (so the demuxer opens it) but over the default
    ``max_pixels`` cap (4096x4096): a reader that trusted it would allocate ~100 MB per frame."""
    head = f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode()
    body = b"".join(b"FRAME\n" + bytes(64) for _ in range(frames))
    Path(path).write_bytes(head + body)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------


def _try(skipped: dict, name: str, fn):
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # an item this machine cannot make (incl. pytest.skip) is reported
        skipped[name] = f"{type(exc).__name__}: {exc}"
        return None


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def build_corpus(
    root: PathLike,
    *,
    size: tuple[int, int] = (64, 64),
    frames: int = 12,
    detector: str = "haar",
    report: Optional[dict] = None,
) -> dict[str, CorpusItem]:
    """Write the corpus under ``root`` and return ``{name: CorpusItem}`` (insertion order is stable).

    ``detector`` is the face detector the caller will use: with ``center`` every readable video
    "has" a face, so the face-less video is expected ``ok`` instead of ``no_face``.
    ``report`` (a dict) receives ``{"skipped": {name: why}}`` for items this machine cannot make.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    items: dict[str, CorpusItem] = {}
    w, h = size

    def add(name: str, path: PathLike, expect: tuple[str, ...], usable: bool = False, note: str = "",
            **checks) -> None:
        items[name] = CorpusItem(name, os.fsdecode(path), tuple(expect), usable, note, dict(checks))

    # a clean base video (no face: frames carry their number) that the patchers start from
    base = root / "_base.mp4"
    make_video(base, frames=frames, size=size, face=False, gop=4)

    # the control: a real face video (carphone frames) that must come out "ok"
    p = _try(skipped, "face",
             lambda: make_video(root / "face.mp4", frames=frames, size=(176, 144), face=True))
    if p is not None:
        add("face", p, ("ok",), usable=True, note="real face footage (control)", display_size=(176, 144))
    add("zero_bytes", make_bad_file(root / "zero.mp4", "zero"), ("unreadable",), note="0-byte file")
    add("random_bytes", make_bad_file(root / "random.mp4", "random"), ("unreadable",),
        note="20 kB of random bytes named .mp4")
    add("png_as_mp4", make_bad_file(root / "image.mp4", "png"), ("unreadable",),
        note="a PNG image named .mp4")
    add("text_as_mp4", make_bad_file(root / "notes.mp4", "text"), ("unreadable",), note="a text file")
    trunc = root / "truncated.mp4"
    data = base.read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    add("truncated", trunc, ("unreadable", "too_short", "ok", "no_face"),
        note="first third of an mp4 (moov at the end is lost or frames are missing)")
    head_only = root / "header_only.mp4"
    head_only.write_bytes(data[:64])
    add("header_only", head_only, ("unreadable", "too_short"), note="first 64 bytes of an mp4")
    p = _try(skipped, "audio_only", lambda: make_audio_only(root / "audio_only.mp4"))
    if p is not None:
        add("audio_only", p, ("unreadable",), note="mp4 with an AAC track and no video stream")
    add("one_frame", make_video(root / "one_frame.mp4", frames=1, size=size, face=False),
        GOOD, usable=True, note="a 1-frame video", frames=1)
    noface_expect = ("ok",) if detector == "center" else ("no_face",)
    add("no_face", make_video(root / "no_face.mp4", frames=frames, size=size, face=False),
        noface_expect, usable=True, note="a video without any face")
    # rotation: the display matrix in tkhd, the form phone videos have
    rot = patch_rotation(make_video(root / "_rot_src.mp4", frames=frames, size=(w + 32, h), face=False),
                         root / "rotated_tkhd.mp4", 90)
    add("rotated_tkhd", rot, GOOD, usable=True, note="tkhd display matrix = 90 degrees",
        display_size=(h, w + 32))
    p = _try(skipped, "rotated_side_data", lambda: make_video(
        root / "rotated_side_data.mp4", frames=frames, size=(w + 32, h), face=False, rotation=-90))
    if p is not None:
        add("rotated_side_data", p, GOOD, usable=True, note="PyAV display-rotation side data",
            display_size=(h, w + 32))
    # variable frame rate: frames with irregular gaps (ms time base)
    rng = np.random.default_rng(1)
    gaps = rng.choice([10, 40, 120, 400], size=frames * 2)
    pts = np.concatenate([[0], np.cumsum(gaps)[:-1]]).astype(int).tolist()
    add("vfr", make_video(root / "vfr.mp4", frames=len(pts), size=size, face=False, pts=pts),
        GOOD, usable=True, note="variable frame rate (irregular pts)", frames=min(len(pts), 8))
    # header lies
    add("huge_dims_y4m", write_y4m_header_lie(root / "huge_dims.y4m"), ("refused",),
        note="raw y4m header claiming 8192x8192 (over the max_pixels cap)")
    add("absurd_dims_y4m", write_y4m_header_lie(root / "absurd_dims.y4m", 60000, 60000),
        ("refused", "unreadable"),
        note="raw y4m header claiming 60000x60000 (FFmpeg itself refuses)")
    add("huge_dims_mp4", patch_dimensions(base, root / "huge_dims.mp4", 65000, 65000),
        ("refused", "unreadable", "ok", "no_face"),
        note="tkhd/avc1 claim 65000x65000 (the H.264 SPS still says the truth)")
    add("huge_frame_count", patch_sample_count(base, root / "huge_count.mp4"),
        ("unreadable", "too_short", "refused", "ok", "no_face"),
        note="stsz claims 2^31 samples, mdhd an absurd duration")
    add("duration_lie", patch_duration(base, root / "duration_lie.mp4"), GOOD, usable=True,
        note="mvhd/mdhd/tkhd durations claim ~50 days; the frames are the real 12", frames=min(frames, 8))
    add("corrupt_middle", corrupt_mdat(make_video(root / "_mid_src.mp4", frames=frames * 2, size=size,
                                                  face=False, gop=4), root / "corrupt_middle.mp4"),
        GOOD, usable=True, note="20 % of mdat overwritten with noise in the middle")
    # names
    add("space_name", make_video(root / "my video (copy) #1.mp4", frames=frames, size=size, face=False),
        GOOD, usable=True, note="spaces, parentheses and # in the name")
    add("unicode_name", make_video(root / "vidéo été 日本.mp4", frames=frames, size=size, face=False),
        GOOD, usable=True, note="non-ASCII UTF-8 name")

    def non_utf8() -> str:
        target = os.path.join(os.fsencode(root), NON_UTF8_NAME)
        with open(target, "wb") as fh:
            fh.write(base.read_bytes())
        return os.fsdecode(target)

    p = _try(skipped, "non_utf8_name", non_utf8)
    if p is not None:
        add("non_utf8_name", p, GOOD, usable=True, note="file name bytes that are not valid UTF-8")
    # permissions: root reads everything, so the file only counts as unreadable for other users
    unread = root / "unreadable.mp4"
    unread.write_bytes(base.read_bytes())
    os.chmod(unread, 0)
    if is_root():
        add("unreadable", unread, GOOD, usable=True,
            note="chmod 000 (running as root: still readable; see test_unreadable_* for a real check)")
    else:
        add("unreadable", unread, ("unreadable",), note="chmod 000")
    # links
    loop_a, loop_b = root / "loop_a.mp4", root / "loop_b.mp4"
    p = _try(skipped, "symlink_loop", lambda: (os.symlink(loop_b.name, loop_a),
                                               os.symlink(loop_a.name, loop_b), loop_a)[-1])
    if p is not None:
        add("symlink_loop", p, ("unreadable",), note="a -> b -> a")
    dangling = root / "dangling.mp4"
    p = _try(skipped, "dangling_link", lambda: (os.symlink("nowhere.mp4", dangling), dangling)[-1])
    if p is not None:
        add("dangling_link", p, ("unreadable", "missing"), note="symlink to a file that does not exist")
    add("missing", root / "does_not_exist.mp4", ("missing",), note="no such file")
    d = root / "folder.mp4"
    d.mkdir(exist_ok=True)
    add("directory", d, ("unreadable",), note="a folder named .mp4")
    fifo = root / "named_pipe.mp4"
    p = _try(skipped, "named_pipe", lambda: (os.mkfifo(fifo), fifo)[-1])
    if p is not None:
        add("named_pipe", p, ("unreadable",), note="a FIFO named .mp4: opening it would block forever")
    if report is not None:
        report["skipped"] = skipped
    return items



__all__ = [
    "ALL_STATUSES", "BAD", "CORPUS_NAMES", "GOOD", "CorpusItem", "build_corpus", "corrupt_mdat", "find_box",
    "is_root", "iter_boxes", "patch_dimensions", "patch_rotation", "patch_duration", "patch_sample_count",
    "rotation_matrix",
    "write_y4m_header_lie",
]
