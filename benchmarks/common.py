"""Small helpers the benchmark scripts share: median timing, a work folder, a plain-text table.

Torch-free on purpose: ``bench_predict_e2e`` imports it at top level, and Detector's decoding workers
re-import that script as their ``__main__``.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls of ``fn`` (synchronise a device inside it) and the last result."""
    times, out = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@contextlib.contextmanager
def work_dir(path: Optional[str], prefix: str) -> Iterator[Path]:
    """``path`` (created, kept: generated videos are reused) or a temporary folder removed afterwards."""
    if path:
        work = Path(path)
        work.mkdir(parents=True, exist_ok=True)
        yield work
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def print_table(rows: Sequence[dict], cols: Sequence[tuple[str, str, str, str]], title: str = "",
                ratio_keys: Sequence[str] = ()) -> None:
    """Rows as a table; ``cols`` are ``(header, alignment, key, format)``; ratio keys get an ``x``;
    a missing value prints as ``-``."""
    if title:
        print(title)
    hdr = " ".join(f"{c[0]:{c[1]}}" for c in cols)
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        cells = []
        for _, align, key, fmt in cols:
            v = r.get(key)
            text = "-" if v is None else format(v, fmt) + ("x" if key in ratio_keys else "")
            cells.append(f"{text:{align}}")
        print(" ".join(cells))
