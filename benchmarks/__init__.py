"""Benchmarks of every stage against a reference-style way and the floor; run from the repository root
as ``python -m benchmarks.run_all`` (or one ``benchmarks.bench_*`` module)."""
