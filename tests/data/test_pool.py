"""The crash-tolerant pool shared by preprocess and predict."""

from __future__ import annotations

import os
import time

import pytest

from deepfake_detector.data.pool import IDLE, imap_resilient


def _slow_crash_on_3(x: int) -> int:
    if x == 3:
        time.sleep(1.5)  # longer than the pool's 1 s polling: the culprit is still running alone
        os._exit(1)
    time.sleep(0.05)
    return x * 10


def _raise_on_2(x: int) -> int:
    if x == 2:
        raise ValueError("bad item")
    return x


@pytest.mark.timeout(120)
def test_a_slow_crashing_item_is_isolated_and_named():
    got = dict(imap_resilient(_slow_crash_on_3, list(range(8)), workers=2,
                              failure=lambda item, msg: ("failed", item, msg)))
    assert sorted(got) == list(range(8))
    assert got[3][0] == "failed" and got[3][1] == 3 and "crashed" in got[3][2]
    assert all(got[i] == i * 10 for i in range(8) if i != 3)


@pytest.mark.timeout(60)
def test_an_exception_is_a_per_item_failure():
    got = dict(imap_resilient(_raise_on_2, [0, 1, 2, 3], workers=2, failure=lambda item, msg: msg))
    assert got[0] == 0 and got[1] == 1 and got[3] == 3
    assert "ValueError" in got[2] and "bad item" in got[2]


def _slow_square(x: int) -> int:
    time.sleep(0.3)
    return x * x


@pytest.mark.timeout(60)
def test_idle_markers_say_when_nothing_is_ready_and_only_when_asked():
    events = list(imap_resilient(_slow_square, [1, 2, 3, 4], workers=1, failure=lambda i, m: m,
                                 idle_marker=True))
    results = [(i, r) for i, r in events if i != IDLE]
    assert sorted(results) == [(0, 1), (1, 4), (2, 9), (3, 16)]
    marks = [k for k, (i, _) in enumerate(events) if i == IDLE]
    assert marks and marks[0] == 0  # waiting for the first result
    assert all(events[k + 1][0] != IDLE for k in marks if k + 1 < len(events))  # once per idle spell
    plain = list(imap_resilient(_slow_square, [1, 2], workers=1, failure=lambda i, m: m))
    assert all(i != IDLE for i, _ in plain)


def test_the_worker_modules_never_import_torch():
    """The forkserver preloads these for every decoding worker: torch there would bring its thread
    pools (and, on a GPU machine, CUDA state) into every fork."""
    import subprocess
    import sys

    from deepfake_detector.data.pool import PRELOAD

    code = ("import sys\n" + "".join(f"import {m}\n" for m in PRELOAD)
            + "import deepfake_detector.inference\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


_SCRIPT = """\
import os
from deepfake_detector.data.pool import imap_resilient

def _pid(item):
    return os.getpid()

def run():
    pids = dict(imap_resilient(_pid, [1, 2, 3], workers=2, failure=lambda item, msg: msg))
    print("PIDS", sorted(set(pids.values())), os.getpid())
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_main_guard_runs_without_a_traceback(tmp_path, guarded):
    """The Python API's first try is a script without `if __name__ == "__main__":`; workers would re-run
    it and die with multiprocessing's traceback. Such a script works in its own process instead."""
    import subprocess
    import sys

    body = _SCRIPT + ('if __name__ == "__main__":\n    run()\n' if guarded else "run()\n")
    script = tmp_path / "user_script.py"
    script.write_text(body)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PIDS"))
    pids, main_pid = line.split(" ", 1)[1].rsplit(" ", 1)
    in_process = pids == f"[{main_pid}]"
    assert in_process is not guarded, line
