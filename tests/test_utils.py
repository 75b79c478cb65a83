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
