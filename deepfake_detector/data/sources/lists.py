"""Text lists of videos to screen (``predict a.txt``): one path per line, or Celeb-DF's test list.

A list is the user's own, so its paths are taken as written: absolute paths and ``..`` are fine,
relative paths are read from ``base`` (default: the list's folder). Celeb-DF's
``List_of_testing_videos.txt`` (``1 Celeb-real/id0_0000.mp4`` lines; 1 = real, 0 = fake in Celeb-DF's
convention) is recognised by its name, or by every line having that form while no line names an
existing file as written (a file really called ``1 clip.mp4`` stays a path). Its labels come back with
the paths, so ``predict`` can score itself against them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .base import read_file_bytes, text_limit
from .celebdf import TEST_LIST, parse_test_line


@dataclass
class ListedVideo:
    """One entry of a list: the path to read, the label the list gives (or None), and its line."""

    path: str
    label: Optional[str] = None
    where: str = ""


def _is_celebdf_list(path: str, lines: list[tuple[int, str]], base: str) -> bool:
    if not lines or any(parse_test_line(line) is None for _, line in lines):
        return False
    if os.path.basename(path).lower() == TEST_LIST.lower():
        return True
    return not any(os.path.lexists(os.path.join(base, line)) for _, line in lines)


def read_video_list(path: str | os.PathLike, base: Optional[str | os.PathLike] = None) -> list[ListedVideo]:
    """The entries of a text list (blank lines and ``#`` comments skipped), with Celeb-DF's labels
    when it is Celeb-DF's test list. An unreadable or oversized list is one ``UserError`` line."""
    shown = os.fsdecode(path)
    text = read_file_bytes(path, text_limit("a list of videos")).decode("utf-8-sig", errors="surrogateescape")
    folder = os.fsdecode(base) if base is not None else os.path.dirname(os.path.abspath(shown))
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1)
             if ln.strip() and not ln.strip().startswith("#")]
    celeb = _is_celebdf_list(shown, lines, folder)
    name = os.path.basename(shown)
    out = []
    for i, line in lines:
        label = None
        if celeb:
            label, line = parse_test_line(line)  # type: ignore[misc]  # checked by _is_celebdf_list
        entry = line if os.path.isabs(line) else os.path.normpath(os.path.join(folder, line))
        out.append(ListedVideo(path=entry, label=label, where=f"{name}:{i}"))
    return out
