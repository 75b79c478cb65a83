"""DDP on CPU: 2 processes with gloo train one model; ranks agree and only rank 0 writes the run folder."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from deepfake_detector.config import ModelConfig, TrainConfig
from tests.cache_helpers import RUN_FILES, make_synthetic_cache


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cache: str, runs: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    from deepfake_detector.engine.trainer import fit

    cfg = TrainConfig(
        cache=cache,
        name="ddp",
        runs_dir=runs,
        epochs=2,
        batch_size=4,
        lr=3e-3,
        seq_len=6,
        workers=0,
        device="cpu",
        balance="sampler",
        model=ModelConfig(backbone="tiny", pretrained=False, hidden_size=16, dropout=0.2),
    )
    summary = fit(cfg, progress=False)
    torch.save(
        {
            "state": summary["model"].state_dict(),
            "history": summary["history"],
            "rank": summary["rank"],
            "world": summary["world_size"],
        },
        os.path.join(out, f"rank{rank}.pt"),
    )


def test_two_gloo_ranks_agree_and_rank0_writes_the_run(tmp_path):
    cache = make_synthetic_cache(tmp_path / "cache", n_real=8, n_fake=9)
    mp.spawn(
        _worker,
        args=(2, _free_port(), str(cache), str(tmp_path / "runs"), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    assert len(r0["history"]) == 2
    for a, b in zip(r0["history"], r1["history"]):
        a.pop("seconds"), b.pop("seconds")
        assert a == b
    run = tmp_path / "runs" / "ddp"
    assert {p.name for p in run.iterdir()} >= RUN_FILES
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    with open(run / "val_predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    from deepfake_detector.data.cache import load_manifest
    from deepfake_detector.data.dataset import split_rows

    val = split_rows(load_manifest(cache), 0.2, 0)["val"]
    # metrics come from the whole validation set gathered from both ranks (odd size: no padding dupes)
    assert sorted(p["path"] for p in preds) == sorted(r.path for r in val)


@pytest.mark.slow
def test_torchrun_command_line(tmp_path):
    cache = make_synthetic_cache(tmp_path / "cache", n_real=6, n_fake=6)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "deepfake_detector",
        "train",
        str(cache),
        "--name",
        "tr",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--backbone",
        "tiny",
        "--no-pretrained",
        "--hidden-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--seq-len",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports
    assert {p.name for p in (tmp_path / "runs" / "tr").iterdir()} >= RUN_FILES
