"""A Ray instance for the cluster tests: 2 CPUs, no dashboard, in a network namespace of its own.

Ray's servers listen on every interface of their network namespace, so the instance is started in a
fresh loopback-only namespace (``benchmarks.netns.private_network``): nothing outside this machine can
reach it. Where namespaces cannot be made (not root), the tests are skipped with the reason, unless
``DFD_RAY_HOST_NETWORK=1`` allows Ray on the host's network.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _network():
    from benchmarks.netns import NamespaceUnavailable, private_network

    try:
        with private_network():
            yield
    except NamespaceUnavailable as exc:
        if os.environ.get("DFD_RAY_HOST_NETWORK") != "1":
            pytest.skip(f"Ray tests need a private network namespace ({exc}); set DFD_RAY_HOST_NETWORK=1 "
                        "to run them on the host's network")
        yield


@pytest.fixture(scope="module")
def ray_local():
    """``ray`` connected to a fresh 2-CPU local instance for this module; shut down afterwards."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'deepfake-detector[cluster]'")
    pytest.importorskip("ray.data")
    if ray.is_initialized():
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    # the actors import the tests' stand-ins (tests.cluster.standins) by reference
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    try:
        with _network():
            ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
                     object_store_memory=256 * 1024 * 1024)
            try:
                yield ray
            finally:
                ray.shutdown()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
