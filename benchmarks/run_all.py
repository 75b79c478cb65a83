"""Run every stage's benchmark on data it generates, one after another, and print their tables.

    python benchmarks/run_all.py [--quick]

Each script compares our implementation with the reference-style way in the same run (see its own
docstring); this entry point only sequences them so one command measures the whole pipeline.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (one repeat, short-GOP clip skipped)")
    args = ap.parse_args(argv)
    runs = [
        ("preprocess", [HERE / "bench_preprocess.py", "--repeat", "1" if args.quick else "3"]
         + (["--videos", "long-gop"] if args.quick else [])),
        ("train", [HERE / "bench_train.py"]),
        ("predict (model stage)", [HERE / "bench_predict.py"]
         + (["--backbone", "tiny", "--clips", "16"] if args.quick else [])),
    ]
    failed = []
    for name, cmd in runs:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, *map(str, cmd)])
        print(f"({name}: {time.perf_counter() - t0:.0f} s, exit {rc})", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
