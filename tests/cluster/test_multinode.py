"""A real multi-node run on one machine: two hosts made with network namespaces (``ip netns`` + veth).

1. Ray: a head node in one namespace, a worker node in the other; the job runs on the head (where ``ray
   job submit`` runs an entrypoint) with one actor per node; both nodes preprocess videos, and the cache
   equals the local engine's.
2. ``torchrun``: 2 nodes x 1 process (gloo) train one model; node B is killed after the first epoch,
   both nodes restart with ``--resume``, and the run finishes every epoch.

Bounded (each step has a timeout) and tidy: every process left in the namespaces is killed and the
namespaces removed. Skipped with the reason where namespaces cannot be made (needs root and iproute2).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from deepfake_detector.config import PreprocessConfig

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CFG = PreprocessConfig(frames=6, size=32, detector="haar")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


@pytest.fixture(scope="module")
def hosts():
    from benchmarks.netns import NamespaceUnavailable, two_hosts

    cm = two_hosts(f"t{os.getpid() % 100000}", subnet=100 + os.getpid() % 100)
    try:
        pair = cm.__enter__()
    except NamespaceUnavailable as exc:
        pytest.skip(f"the multi-node test needs network namespaces: {exc}")
    try:
        yield pair
    finally:
        cm.__exit__(None, None, None)


_TOKEN = secrets.token_hex(32)  # the test cluster's own token (Ray's token authentication stays on)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_TOKEN)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _in(ns: str, args: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _spawn(ns: str, args: list, env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(["ip", "netns", "exec", ns, *map(str, args)], cwd=ROOT, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _clear(*hosts) -> None:
    from benchmarks.netns import kill_namespace_processes

    for h in hosts:
        kill_namespace_processes(h.ns)


def test_ray_head_and_worker_node_share_the_videos(hosts, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'deepfake-detector[cluster]'")
    from deepfake_detector.data import cache
    from deepfake_detector.data.preprocess import run_preprocess
    from deepfake_detector.data.records import VideoRecord
    from tests.helpers import make_video

    a, b = hosts
    data = tmp_path / "data"
    for i in range(8):
        make_video(data / f"v{i}.mp4", frames=8 + i, size=(96, 80), face=i % 4 != 3)
    env = _env(DFD_NODE_LOG=str(tmp_path / "nodes"))
    address = f"{a.ip}:6390"
    temp = Path(tempfile.mkdtemp(prefix="dfdray"))  # not /tmp/ray: its ray_current_cluster would linger
    common = ["--num-cpus=1", "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        head = _in(a.ns, [BIN / "ray", "start", "--head", f"--node-ip-address={a.ip}", "--port=6390",
                          "--include-dashboard=false", *common], env, 180)
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        node = _in(b.ns, [BIN / "ray", "start", f"--address={address}", f"--node-ip-address={b.ip}", *common],
                   env, 180)
        assert node.returncode == 0, node.stdout[-2000:] + node.stderr[-2000:]
        job = _in(a.ns, [sys.executable, "-m", "tests.cluster.multinode_driver", "--address", address,
                         "--data", data, "--out", tmp_path / "ray"], env, 240)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    finally:
        _clear(a, b)
        shutil.rmtree(temp, ignore_errors=True)
    result = json.loads(job.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 2 and sum(result["counts"].values()) == 8, result
    ran_on = {p.read_text() for p in (tmp_path / "nodes").glob("*.node")}
    assert len(ran_on) == 2, "videos were processed on one node only"

    recs = [VideoRecord(path=str(p), label="REAL", rel_path=p.name) for p in sorted(data.glob("*.mp4"))]
    run_preprocess(recs, tmp_path / "local", CFG, workers=1, progress=False)
    read = lambda out: [{k: v for k, v in vars(r).items() if k != "seconds"}  # noqa: E731
                        for r in cache.read_manifest_file(out / cache.MANIFEST_NAME, cache.MANIFEST_SCHEMA)]
    assert read(tmp_path / "ray") == read(tmp_path / "local")
    clips = lambda out: {str(p.relative_to(out)): p.read_bytes() for p in (out / "clips").rglob("*.npy")}  # noqa: E731
    assert clips(tmp_path / "ray") == clips(tmp_path / "local")


def _epochs(run: Path) -> list[int]:
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [int(r["epoch"]) for r in csv.DictReader(fh)]


def _torchrun(host, rank: int, master, port: int, cache: Path, runs: Path, *extra: str) -> list:
    return [BIN / "torchrun", "--nnodes", 2, "--node-rank", rank, "--nproc-per-node", 1, "--master-addr",
            master.ip, "--master-port", port, "-m", "deepfake_detector", "train", cache, "--name", "mn",
            "--runs-dir", runs, "--backbone", "tiny", "--no-pretrained", "--hidden-size", 16, "--epochs", 8,
            "--batch-size", 4, "--seq-len", 6, "--workers", 0, "--device", "cpu", "--patience", 100, *extra]


def _wait(procs: list, timeout: float) -> list:
    deadline = time.monotonic() + timeout
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(1.0, deadline - time.monotonic()))
    return [p.poll() for p in procs]


def test_torchrun_two_nodes_resume_after_one_node_is_killed(hosts, tmp_path):
    from benchmarks.netns import kill_namespace_processes
    from tests.cache_helpers import make_synthetic_cache

    a, b = hosts
    cache = make_synthetic_cache(tmp_path / "cache", n_real=12, n_fake=12, size=32)
    runs = tmp_path / "runs"
    env = {h.ns: _env(GLOO_SOCKET_IFNAME=h.dev) for h in (a, b)}
    try:
        first = [_spawn(h.ns, _torchrun(h, k, a, 29511, cache, runs), env[h.ns], tmp_path / f"first{k}.log")
                 for k, h in enumerate((a, b))]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not _epochs(runs / "mn") and first[1].poll() is None:
            time.sleep(0.05)
        assert _epochs(runs / "mn"), (tmp_path / "first0.log").read_text()[-3000:]
        kill_namespace_processes(b.ns)  # node B goes away mid-run: every process on it, kill -9
        _wait(first, 90)
        done = _epochs(runs / "mn")
        assert done and done[-1] < 8, f"the first run was not interrupted: {done}"
        _clear(a, b)
        again = [_spawn(h.ns, _torchrun(h, k, a, 29512, cache, runs, "--resume"), env[h.ns],
                        tmp_path / f"again{k}.log") for k, h in enumerate((a, b))]
        codes = _wait(again, 240)
        assert codes == [0, 0], (tmp_path / "again0.log").read_text()[-3000:]
    finally:
        _clear(a, b)
    assert _epochs(runs / "mn") == list(range(1, 9))
    assert (runs / "mn" / "best.pt").is_file() and (runs / "mn" / "last.pt").is_file()
