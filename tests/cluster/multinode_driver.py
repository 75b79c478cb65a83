"""The job the multi-node test submits on the head node: preprocess a folder of videos on the cluster
at ``--address`` with one actor per node, noting which node did each video (``standins``).

    python -m tests.cluster.multinode_driver --address HOST:PORT --data DIR --out CACHE
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--address", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    from deepfake_detector.cluster.preprocess import RayEngine
    from deepfake_detector.cluster.runtime import RayOptions
    from deepfake_detector.data import preprocess as pp
    from deepfake_detector.data.records import VideoRecord
    from tests.cluster import standins
    from tests.cluster.test_multinode import CFG

    pp._TASK = standins.node_recording_task
    videos = sorted(Path(args.data).glob("*.mp4"))
    recs = [VideoRecord(path=str(p), label="REAL", rel_path=p.name) for p in videos]
    engine = RayEngine(RayOptions(address=args.address, workers=args.workers))
    summary = pp.run_preprocess(recs, args.out, CFG, progress=False, engine=engine)
    print(json.dumps({"counts": summary.counts, "nodes": engine.info.nodes if engine.info else 0,
                      "describe": engine.describe()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
