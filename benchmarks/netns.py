"""Network namespaces for Ray runs that nothing outside this machine can reach.

Ray's servers (GCS, raylets, workers) listen on every interface of their network namespace. The
tests and benchmarks start throwaway Ray instances, so they put them in a namespace of their own:

* ``private_network()``: this thread, and every process it starts (a local Ray instance), in a new
  network namespace that has only loopback; the thread's own namespace is restored afterwards.
* ``two_hosts(...)`` (multi-node tests): two named namespaces (``ip netns``) joined by a veth pair,
  ``10.201.X.1`` and ``10.201.X.2``, removed afterwards.

Both need root (CAP_SYS_ADMIN); where the kernel or the container refuses, ``NamespaceUnavailable``
says why, so a test can skip with that reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from typing import NamedTuple, Optional

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = "16sH22x"  # struct ifreq: the name, then the flags (the rest of the 40-byte union unused)


class Host(NamedTuple):
    """One of ``two_hosts``: its namespace, address and network device."""

    ns: str
    ip: str
    dev: str


class NamespaceUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no CAP_SYS_ADMIN, a kernel without them)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _loopback_up() -> None:
    """``ip link set lo up`` without iproute2 (a new namespace's loopback starts down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


@contextlib.contextmanager
def private_network() -> Iterator[None]:
    """Run the body (and the processes it starts) in a fresh loopback-only network namespace."""
    try:
        old = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    except OSError as exc:
        raise NamespaceUnavailable(f"cannot open this thread's network namespace: {exc}") from None
    libc = _libc()
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            hint = "needs root" if code == errno.EPERM else errno.errorcode.get(code, "")
            raise NamespaceUnavailable(f"unshare(CLONE_NEWNET) failed: {os.strerror(code)} ({hint})")
        try:
            _loopback_up()
            yield
        finally:
            if libc.setns(old, CLONE_NEWNET) != 0:  # pragma: no cover - the kernel refused to go back
                raise OSError(ctypes.get_errno(), "setns back to the original network namespace failed")
    finally:
        os.close(old)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def ip_available() -> Optional[str]:
    """None when ``ip netns`` can be used here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's 'ip' is not installed (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"dfd-probe-{os.getpid()}"
    res = _ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return f"'ip netns add' failed: {res.stderr.strip() or res.returncode}"
    _ip("netns", "delete", probe, check=False)
    return None


@contextlib.contextmanager
def two_hosts(tag: str, subnet: int = 77) -> Iterator[tuple[Host, Host]]:
    """Two namespaces ``dfd-<tag>-a`` / ``-b`` joined by a veth pair; yields their two ``Host``s.

    Everything is removed on the way out, whatever happened inside."""
    why = ip_available()
    if why:
        raise NamespaceUnavailable(why)
    a, b = f"dfd-{tag}-a", f"dfd-{tag}-b"
    ip_a, ip_b = f"10.201.{subnet}.1", f"10.201.{subnet}.2"
    made: list[str] = []
    try:
        try:
            _make_pair(a, b, ip_a, ip_b, tag, made)
        except subprocess.CalledProcessError as exc:  # setting up only: the body's own errors pass through
            why = (exc.stderr or "").strip()
            raise NamespaceUnavailable(f"'{' '.join(exc.cmd)}' failed: {why}") from None
        yield Host(a, ip_a, f"v{tag[:6]}a"), Host(b, ip_b, f"v{tag[:6]}b")
    finally:
        for ns in made:
            kill_namespace_processes(ns)
            _ip("netns", "delete", ns, check=False)


def _make_pair(a: str, b: str, ip_a: str, ip_b: str, tag: str, made: list[str]) -> None:
    for ns in (a, b):
        _ip("netns", "delete", ns, check=False)  # a leftover of a killed run
        _ip("netns", "add", ns)
        made.append(ns)
    veth_a, veth_b = f"v{tag[:6]}a", f"v{tag[:6]}b"
    _ip("link", "add", veth_a, "netns", a, "type", "veth", "peer", "name", veth_b, "netns", b)
    for ns, dev, addr in ((a, veth_a, ip_a), (b, veth_b, ip_b)):
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _ip("-n", ns, "link", "set", dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs in namespace ``ns`` (by the PIDs ``ip netns pids`` lists)."""
    res = _ip("netns", "pids", ns, check=False)
    for pid in res.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), 9)
