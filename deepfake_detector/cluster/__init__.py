"""Run ``preprocess`` and ``predict`` on a Ray cluster (``--engine ray``), with the local engine's results.

Ray is optional (``pip install 'deepfake-detector[cluster]'``); nothing here imports it before it is
needed, so the package and ``--help`` work without it.

* ``runtime``: connecting to (or starting) Ray, actor sizing, the per-video crash ledger and the
  hang watchdog that both engines' actors share.
* ``preprocess`` (layer 1, beside ``data``): ``RayEngine`` runs ``data.preprocess``'s own per-video task
  (decode, crop, write the clip) in actors; ``run_preprocess`` keeps planning, resuming and the manifest.
* ``predict`` (layer 5, beside ``inference``): decoding actors on CPUs feed model actors (GPUs when the
  cluster has them) that each load the ``Detector`` once.
"""

from __future__ import annotations

ENGINES = ("local", "ray")
CLUSTER_EXTRA = "pip install 'deepfake-detector[cluster]'"

__all__ = ["CLUSTER_EXTRA", "ENGINES"]
