"""Crash safety: ``kill -9`` in the middle of ``preprocess`` / ``train`` never costs data, and full or
read-only disks give clear errors instead of tracebacks or silently broken output.

The disk tests mount a small tmpfs (needs root with CAP_SYS_ADMIN, as in the CI container); where that
is impossible they are skipped with the reason and the in-process ENOSPC simulation still runs.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from deepfake_detector.config import PreprocessConfig
from deepfake_detector.data import cache
from tests.cache_helpers import make_synthetic_cache
from tests.corpus import is_root
from tests.helpers import cli_cmd, cli_env, make_video, run_cli, run_cli_in_process

ENV = cli_env()


def kill_group_when(proc: subprocess.Popen, ready, timeout: float = 180) -> bool:
    """SIGKILL the whole process group (CLI + its workers) as soon as ``ready()``; False when the
    process ended by itself first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    raise AssertionError("the condition to kill never came")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------------
# kill -9 during preprocess
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twelve_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds") / "data"
    for i in range(12):
        label = "real" if i % 2 else "fake"
        make_video(root / label / f"v{i:02d}.mp4", frames=24, size=(176, 144), face=True)
    return root


def check_complete_cache(out: Path, n: int, size: int) -> list[cache.ManifestRow]:
    rows = cache.load_manifest(out)
    assert len(rows) == n, [r.path for r in rows]
    assert len({r.path for r in rows}) == n
    for r in rows:
        assert r.status in ("ok", "no_face"), (r.path, r.status, r.error)
        assert r.clip and not r.clip.endswith(".tmp")
        clip = cache.load_clip(out, r.clip, mmap=False)
        assert clip.shape == (r.frames, size, size, 3) and r.frames >= 1
    # every clip file in the cache is referenced and loads (no orphaned half-files named like clips)
    referenced = {r.clip for r in rows}
    for p in (out / cache.CLIPS_DIR).rglob("*.npy"):
        assert p.relative_to(out).as_posix() in referenced, p
    return rows


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_9_during_preprocess_then_rerun_gives_a_complete_cache(twelve_videos, tmp_path):
    out = tmp_path / "cache"
    args = ("preprocess", str(twelve_videos), "--format", "folders", "--out", str(out), "--frames", "20",
            "--size", "48", "--detector", "dlib", "--workers", "1", "--no-progress")
    proc = subprocess.Popen(cli_cmd(*args), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)

    def some_work_done() -> bool:  # a few clips written: the run is in the middle of its work
        clips = list((out / cache.CLIPS_DIR).rglob("*.npy")) if (out / cache.CLIPS_DIR).exists() else []
        return len(clips) >= 3

    killed = kill_group_when(proc, some_work_done)
    assert killed, "preprocess finished before it could be killed; make the videos slower"
    before = len(list((out / cache.CLIPS_DIR).rglob("*.npy")))
    assert 3 <= before < 12, before
    # a reader of the killed cache sees only whole files: every manifest row (if any) loads
    done_before = 0
    if (out / cache.MANIFEST_NAME).exists():
        for r in cache.load_manifest(out):
            if r.clip:
                cache.load_clip(out, r.clip, mmap=False)
                done_before += 1
    # stale temporaries like the ones a kill can leave behind are never mistaken for data
    stale_clip = out / cache.CLIPS_DIR / "zz" / ".zz0000.npy.abc123.tmp"
    stale_clip.parent.mkdir(parents=True, exist_ok=True)
    stale_clip.write_bytes(b"\x93NUMPY half")
    (out / ".manifest.csv.xyz.tmp").write_text("path,status\nbogus.mp4,ok\n")
    proc = run_cli(*args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rows = check_complete_cache(out, 12, 48)
    assert {os.path.basename(r.path) for r in rows} == {f"v{i:02d}.mp4" for i in range(12)}
    assert "bogus.mp4" not in {r.path for r in rows}
    # the rerun did not redo the videos the manifest already listed as finished
    skipped = re.search(r"^skipped\s+(\d+)", proc.stdout, re.M)
    assert skipped and int(skipped.group(1)) == done_before, (done_before, proc.stdout[-1500:])


def group_pids(pgid: int) -> list[int]:
    """Processes whose process group is ``pgid`` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["preprocess", "predict"])
def test_kill_9_of_the_main_process_only_leaves_no_stray_workers(twelve_videos, tmp_path, command):
    """kill -9 of just the CLI (not its process group), as a user or an OOM killer does: its decoding
    worker processes must notice and exit instead of living on forever (holding memory)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc")
    if command == "preprocess":
        argv = cli_cmd("preprocess", str(twelve_videos), "--format", "folders", "--out", str(tmp_path / "c"),
                       "--frames", "20", "--size", "48", "--detector", "dlib", "--workers", "1",
                       "--no-progress")
    else:
        from tests.test_corpus_predict import make_checkpoint

        ckpt = make_checkpoint(tmp_path / "best.pt", PreprocessConfig(frames=20, size=48, detector="dlib"))
        argv = cli_cmd("predict", str(ckpt), str(twelve_videos), "--workers", "1", "--device", "cpu", "-q")
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and proc.poll() is None and len(group_pids(proc.pid)) < 4:
            time.sleep(0.05)  # main + resource tracker + forkserver + one worker
        time.sleep(1.0)
        if proc.poll() is not None:
            pytest.skip(f"{command} finished before it could be killed")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and group_pids(proc.pid):
            time.sleep(0.2)
        left = group_pids(proc.pid)
        assert not left, f"{command}: {len(left)} process(es) of its pool still running 10 s after kill -9"
    finally:
        for pid in group_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# kill -9 during train, then --resume
# --------------------------------------------------------------------------------------------------

TRAIN_ARGS = ("--backbone", "tiny", "--no-pretrained", "--hidden-size", "16", "--epochs", "2",
              "--batch-size", "4", "--seq-len", "6", "--workers", "0", "--device", "cpu", "--seed", "3",
              "--patience", "0", "--lr", "0.003", "--monitor", "val_auc", "--balance", "sampler")


@contextlib.contextmanager
def one_torch_thread():
    """The same thread count as the OMP_NUM_THREADS=1 subprocess, so in-process runs match it bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_kill_9_during_train_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    import torch

    from deepfake_detector.checkpoint import load_checkpoint

    data = make_synthetic_cache(tmp_path / "cache", n_real=8, n_fake=8, kind="flicker")
    runs = tmp_path / "runs"
    # the killed run is a real process (SIGKILL); the reference and the resume run in this process
    proc = subprocess.Popen(cli_cmd("train", str(data), "--name", "b", "--runs-dir", str(runs), *TRAIN_ARGS),
                            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    last = runs / "b" / "last.pt"
    killed = kill_group_when(proc, last.exists)
    assert killed, "training finished before it could be killed"
    first = load_checkpoint(last)  # the file a kill left is whole
    assert first["epoch"] == 1
    with one_torch_thread():
        straight = run_cli_in_process(capsys, "train", data, "--name", "a", "--runs-dir", runs, *TRAIN_ARGS)
        assert straight.returncode == 0, straight.stderr[-3000:]
        resumed = run_cli_in_process(capsys, "train", data, "--name", "b", "--runs-dir", runs, "--resume",
                                     "--device", "cpu")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = read_rows(runs / "a" / "metrics.csv"), read_rows(runs / "b" / "metrics.csv")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        ra.pop("seconds", None), rb.pop("seconds", None)
        assert ra == rb
    for name in ("best.pt", "last.pt"):
        ca, cb = load_checkpoint(runs / "a" / name), load_checkpoint(runs / "b" / name)
        assert ca["epoch"] == cb["epoch"] and ca["threshold"] == cb["threshold"]
        for k, v in ca["model"].items():
            assert torch.equal(v, cb["model"][k]), (name, k)


# --------------------------------------------------------------------------------------------------
# Full and read-only disks
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", readonly: bool = False):
    """Mount a small tmpfs at ``path`` (skip the test with the reason when this machine cannot)."""
    path.mkdir(parents=True, exist_ok=True)
    if not is_root():
        pytest.skip("mounting a tmpfs needs root")
    opts = f"size={size},mode=0777"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        if readonly:
            ro = subprocess.run(["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True)
            if ro.returncode != 0:
                pytest.skip(f"cannot remount the tmpfs read-only: {ro.stderr.strip()}")
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def readonly_dir(path: Path):
    """A folder nobody may write to: chmod 555 for ordinary users, a read-only tmpfs for root."""
    if is_root():
        with tmpfs(path, readonly=True) as p:
            yield p
    else:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)


def assert_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-4000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors, text[-2000:]
    assert any(all(n.lower() in e.lower() for n in needles) for e in errors), errors


@pytest.fixture(scope="module")
def four_videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds4") / "data"
    for i in range(4):
        make_video(root / ("real" if i % 2 else "fake") / f"w{i}.mp4", frames=12, size=(64, 64), face=False)
    return root


def assert_disk_full_line(proc: subprocess.CompletedProcess, what: str) -> None:
    """Exit 1 and one ``error:`` line that names the disk-full write and says how to resume."""
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text[-4000:]
    assert proc.returncode == 1, text[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    line = errors[0]
    assert f"disk full while writing {what}" in line and "No space left on device" in line, line
    assert "free space and rerun the same command to resume" in line, line


@pytest.mark.timeout(300)
def test_preprocess_on_a_full_disk_reports_no_space(four_videos, tmp_path):
    with tmpfs(tmp_path / "full", size="300k") as mnt:
        # clips of 12 x 112 x 112 x 3 = 452 kB: none fits, preprocess.json and the manifest do
        proc = run_cli("preprocess", str(four_videos), "--format", "folders", "--out", str(mnt / "cache"),
                       "--frames", "16", "--size", "112", "--detector", "center", "--workers", "0",
                       "--no-progress", cwd=tmp_path)
        assert_disk_full_line(proc, "clip clips/")
        # the run stopped at the first full write: one row says why, the other videos were not tried
        rows = cache.load_manifest(mnt / "cache")
        assert len(rows) == 1 and rows[0].status == "error" and "No space" in rows[0].error, rows
        assert "stopped early: 3 video(s) not tried yet" in proc.stdout, proc.stdout[-2000:]
        # nothing half-written was left behind as data
        assert not list((mnt / "cache").rglob("*.npy")) and not list((mnt / "cache").rglob("*.tmp"))


@pytest.mark.timeout(300)
def test_preprocess_when_the_disk_fills_partway_exits_1_and_a_rerun_resumes(four_videos, tmp_path):
    """Some clips fit, then the disk is full: the run must not exit 0 (it used to, because some videos
    were fine). It stops, keeps what finished in the manifest, and the same command resumes."""
    args = ("preprocess", str(four_videos), "--format", "folders", "--frames", "16", "--size", "64",
            "--detector", "center", "--workers", "0", "--no-progress")
    # 12 x 64 x 64 x 3 = 147 kB per clip (37 tmpfs pages): two fit in 360k (90 pages), a third does not
    with tmpfs(tmp_path / "full", size="360k") as mnt:
        out = mnt / "cache"
        proc = run_cli(*args, "--out", str(out), cwd=tmp_path)
        assert_disk_full_line(proc, "clip clips/")
        rows = cache.load_manifest(out)
        assert sorted(r.status for r in rows) == ["error", "ok", "ok"], rows
        for r in rows:
            if r.status == "ok":
                assert cache.load_clip(out, r.clip, mmap=False).shape == (12, 64, 64, 3)
        assert len(list(out.rglob("*.npy"))) == 2 and not list(out.rglob("*.tmp"))
        # free space (grow the file system) and run the same command again
        grown = subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], capture_output=True, text=True)
        if grown.returncode != 0:
            pytest.skip(f"cannot grow the tmpfs: {grown.stderr.strip()}")
        again = run_cli(*args, "--out", str(out), cwd=tmp_path)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert re.search(r"^skipped\s+2$", again.stdout, re.M), again.stdout[-1500:]
        rows = cache.load_manifest(out)
        assert len(rows) == 4 and all(r.status == "ok" for r in rows), rows


@pytest.mark.timeout(300)
def test_train_on_a_full_disk_is_a_clear_error(tmp_path, capsys):
    from deepfake_detector.checkpoint import load_checkpoint

    data = make_synthetic_cache(tmp_path / "cache", n_real=6, n_fake=6)
    with tmpfs(tmp_path / "full", size="64k") as mnt:
        proc = run_cli_in_process(capsys, "train", data, "--name", "r", "--runs-dir", mnt / "runs",
                                  *TRAIN_ARGS[:-8], "--epochs", "1")
        assert not list(mnt.rglob("*.tmp"))
        for p in mnt.rglob("*.pt"):
            load_checkpoint(p)  # whatever is there is whole
        assert_clear_error(proc, "space")


@pytest.mark.timeout(300)
def test_predict_output_on_a_full_disk_is_a_clear_error(tmp_path, capsys):
    from tests.test_corpus_predict import make_checkpoint

    video = make_video(tmp_path / "v.mp4", frames=8, size=(64, 64), face=False)
    ckpt = make_checkpoint(tmp_path / "best.pt", PreprocessConfig(frames=4, size=32, detector="center"))
    with tmpfs(tmp_path / "full", size="64k") as mnt:
        with contextlib.suppress(OSError), open(mnt / "filler", "wb") as fh:  # fill the rest of the disk
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        proc = run_cli_in_process(capsys, "predict", ckpt, video, "--output", mnt / "out.csv",
                                  "--workers", "0", "--device", "cpu")
        assert_clear_error(proc, "space")
        assert not (mnt / "out.csv").exists() and not list(mnt.rglob("*.tmp"))


def test_disk_full_while_writing_the_manifest_is_a_clear_error(four_videos, tmp_path, monkeypatch, capsys):
    """ENOSPC on the manifest itself (in-process, works everywhere): one error line, no exception."""
    from deepfake_detector import cli

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "write_manifest_file", full)
    try:
        code = cli.main(["preprocess", str(four_videos), "--format", "folders", "--out", str(tmp_path / "c"),
                         "--frames", "4", "--size", "32", "--detector", "center", "--workers", "0",
                         "--no-progress"])
    except OSError as exc:
        pytest.fail(f"disk full while writing the manifest escaped as an exception: {exc!r}")
    err = capsys.readouterr().err
    assert code == 1 and "error: disk full while writing the manifest" in err and "No space" in err, err
    assert "rerun the same command to resume" in err, err


def test_enospc_while_writing_clips_stops_the_run_and_a_rerun_resumes(four_videos, tmp_path, monkeypatch,
                                                                       capsys):
    """Disk full simulated in-process (works everywhere): the first two clips are written, the third
    write fails with ENOSPC. The run stops there (the fourth video is not tried: it would fail the
    same way), the manifest keeps the two finished videos and says why the third failed, no temp file
    is left, the CLI exits 1 with one clear line, and the same command afterwards does the rest."""
    from deepfake_detector import cli, utils

    real_fdopen = os.fdopen
    clips_written = []

    class FullFile:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

    def fdopen(fd, mode="r", *a, **kw):
        fh = real_fdopen(fd, mode, *a, **kw)
        if "b" not in mode:  # clips are binary, the manifest is text
            return fh
        clips_written.append(fd)
        return FullFile(fh) if len(clips_written) > 2 else fh

    out = tmp_path / "cache"
    argv = ["preprocess", str(four_videos), "--format", "folders", "--out", str(out), "--frames", "4",
            "--size", "32", "--detector", "center", "--workers", "0", "--no-progress"]
    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(utils.os, "fdopen", fdopen)
        code = cli.main(argv)
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(errors) == 1, captured.err
    assert "disk full while writing clip clips/" in errors[0] and "No space left" in errors[0], errors
    assert "free space and rerun the same command to resume" in errors[0], errors
    assert len(clips_written) == 3  # the fourth video was not even tried
    rows = cache.load_manifest(out)
    assert sorted(r.status for r in rows) == ["error", "ok", "ok"], rows
    failed = next(r for r in rows if r.status == "error")
    assert "No space left" in failed.error and not failed.clip, failed
    assert not list(out.rglob("*.tmp")) and len(list(out.rglob("*.npy"))) == 2
    # space is back: the same command finishes the job and skips what was done
    assert cli.main(argv) == 0
    assert re.search(r"^skipped\s+2$", capsys.readouterr().out, re.M)
    rows = cache.load_manifest(out)
    assert len(rows) == 4 and all(r.status == "ok" and r.clip for r in rows), rows


@pytest.mark.timeout(300)
def test_read_only_output_folders_give_clear_errors(four_videos, tmp_path, capsys):
    from tests.test_corpus_predict import make_checkpoint

    data = make_synthetic_cache(tmp_path / "cache", n_real=4, n_fake=4)
    video = make_video(tmp_path / "v.mp4", frames=8, size=(64, 64), face=False)
    ckpt_dir = tmp_path / "ck"
    ckpt_dir.mkdir()
    # the checkpoint matches the cache's clips, so evaluate gets as far as writing its results
    ckpt = make_checkpoint(ckpt_dir / "best.pt", PreprocessConfig(frames=6, size=24, detector="center"))
    failures = []
    with readonly_dir(tmp_path / "ro") as ro:
        runs = {
            "preprocess": (["preprocess", four_videos, "--format", "folders", "--out", ro / "cache",
                            "--detector", "center", "--workers", "0", "--no-progress"], "cache"),
            "train": (["train", data, "--name", "r", "--runs-dir", ro / "runs", *TRAIN_ARGS[:-8],
                       "--epochs", "1"], "runs"),
            "predict --output": (["predict", ckpt, video, "--output", ro / "out.csv", "--workers", "0",
                                  "--device", "cpu"], "writ"),
            "predict --explain": (["predict", ckpt, video, "--explain", ro / "heat", "--workers", "0",
                                   "--device", "cpu"], "explanation"),
            "evaluate --out": (["evaluate", ckpt, data, "--out", ro / "eval", "--device", "cpu"], "eval"),
        }
        for name, (argv, needle) in runs.items():
            proc = run_cli_in_process(capsys, *argv)
            try:
                assert_clear_error(proc, *([needle] if needle else []))
            except AssertionError as exc:
                failures.append(f"{name}: {str(exc)[-1500:]}")
    assert not failures, "\n\n".join(failures)
