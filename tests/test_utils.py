"""Atomic writes: all or nothing, and the file mode a plain open() would give."""

from __future__ import annotations

import os
import stat

import pytest

from deepfake_detector.utils import atomic_open, atomic_write_text, process_umask


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_umask_mode_not_mkstemps_0600(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert process_umask() == mask
        atomic_write_text(tmp_path / "a.txt", "x")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    got = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert got == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path, monkeypatch):
    """kill -9 during a write leaves ``.NAME.~HOST-PID~XXXX.tmp``; the next write into that folder
    removes it, and never the temporary of a writer that is still alive."""
    import subprocess
    import sys

    from deepfake_detector import utils

    code = ("import os, sys\nfrom deepfake_detector.utils import atomic_open\n"
            "with atomic_open(sys.argv[1], 'w') as fh:\n    fh.write('half'); fh.flush(); os._exit(9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "results.csv")], cwd=os.getcwd())
    assert proc.returncode == 9
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and not (tmp_path / "results.csv").exists()
    alive = tmp_path / f".other.csv.~{utils._owner_tag()}~abc.tmp"  # this process: alive
    alive.write_text("in progress")
    monkeypatch.setattr(utils, "_swept", set())
    atomic_write_text(tmp_path / "results.csv", "ok")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["results.csv", alive.name])
