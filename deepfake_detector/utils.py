"""Small shared helpers: atomic writes, hashing, logging set-up, path safety."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)


def process_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (``/proc/self/status``)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it and set it back
    os.umask(mask)
    return mask


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create folder ``path`` if needed and prove a file can be made in it, before hours of work go into
    results that could not be saved. A real probe: ``os.access`` says yes to root on read-only mounts
    and pseudo file systems (/proc). Raises ``UserError`` naming ``what`` (e.g. "output")."""
    from .errors import UserError

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the {what} folder {folder}: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UserError(f"the {what} folder {folder} is not writable ({exc.strerror or exc})") from None
    return folder


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` and rename it over ``path`` only on success.

    An interrupted writer (crash, kill -9, disk full) leaves the old file or no file, never a
    half-written one; the temporary has a ``.tmp`` suffix so readers never mistake it for data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.~{_owner_tag()}~", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            # mkstemp makes 0600 files; give the mode a plain open() would (0666 less the umask), or a
            # cache or run folder shared by a group or read by a service account is unreadable
            os.chmod(tmp, 0o666 & ~process_umask())
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# Temporaries carry their writer's host and pid (``.NAME.~HOST-PID~XXXX.tmp``), so a later writer can tell
# the leftovers of a killed process from the work of a live one.
_TEMP_RE = re.compile(r"^\..+\.~([0-9a-f]{8})-(\d+)~[^/]*\.tmp$")
_swept: set[str] = set()


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _owner_tag() -> str:
    return f"{_host_tag()}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _sweep_stale_temps(folder: Path) -> None:
    """Remove the temporaries that killed writers on this host left in ``folder`` (once per folder and
    process: a ``kill -9`` during a write leaves one, and no later run would otherwise remove it)."""
    key = os.fspath(folder)
    if key in _swept:
        return
    _swept.add(key)
    host = _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m and m.group(1) == host and int(m.group(2)) != os.getpid() and not _pid_alive(int(m.group(2))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                log.debug("removed %s, left by a killed writer", entry.path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file so a killed run never leaves a truncated checkpoint."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# A path whose bytes are not valid UTF-8 (a latin-1 name on a Linux disk) is written to our CSV and JSON
# files as this prefix + its bytes percent-encoded, so every file we write is valid UTF-8 and still names
# the file exactly; every other path is written as it is.
PATH_BYTES_PREFIX = "bytes:"


def path_to_text(path: str) -> str:
    """``path`` as text for a CSV/JSON cell (:data:`PATH_BYTES_PREFIX`); :func:`path_from_text` undoes it."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return PATH_BYTES_PREFIX + urllib.parse.quote(os.fsencode(path), safe="/")
    return path


def path_from_text(text: str) -> str:
    """The path a cell written by :func:`path_to_text` names (other text is returned as it is)."""
    if text.startswith(PATH_BYTES_PREFIX):
        return os.fsdecode(urllib.parse.unquote_to_bytes(text[len(PATH_BYTES_PREFIX):]))
    return text


def printable_text(text: str) -> str:
    """Free text (an error message quoting a file name) made valid UTF-8: undecodable bytes as ``\\udcXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_schema(schema: Any, *, current: int, what: str, where: Any,
                 error: type[Exception] = ValueError) -> int:
    """``schema`` if this version reads that layout; a file from a newer package is refused, not misread."""
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise error(f"{where}: invalid {what} schema {schema!r}")
    if schema > current:
        raise error(f"{where}: {what} schema {schema} is newer than this version of deepfake-detector "
                    f"reads ({current}); upgrade the package")
    return schema


def upgrade_schema(data: Any, schema: Any, *, current: int, upgraders: Mapping[int, Callable[[Any], Any]],
                   what: str, where: Any, error: type[Exception] = ValueError) -> Any:
    """``data`` written in layout ``schema`` brought to layout ``current`` through ``upgraders`` (schema N
    -> N+1 each): the one rule for every versioned file (checkpoint, manifest, config.yaml)."""
    schema = check_schema(schema, current=current, what=what, where=where, error=error)
    while schema < current:
        data = upgraders[schema](data)
        schema += 1
    return data


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_within(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` resolves (symlinks followed) to a location inside ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def setup_logging(verbosity: int = 0) -> None:
    """Configure the root logger for the CLI (library code only ever calls ``logging.getLogger``)."""
    level = logging.WARNING - 10 * verbosity
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
