"""Exceptions that separate user mistakes (one clear line, no traceback) from bugs."""

from __future__ import annotations

import errno


class UserError(Exception):
    """A problem the user can fix (bad argument, missing file, refused input).

    The CLI prints ``error: <message>`` and exits with ``exit_code`` instead of a traceback.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UnsafeFileError(UserError):
    """A file that would need arbitrary code execution to load (pickle payloads, foreign checkpoints)."""


class WeightsUnavailableError(UserError):
    """Pretrained weights could not be loaded (offline, missing file, hash mismatch)."""


#: Write errors that every later write into the same place would hit too: a run stops at the first one
#: (preprocess, predict --explain) or the CLI prints one line instead of a traceback.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})
NO_WRITE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
WRITE_STOP_ERRNOS = DISK_FULL_ERRNOS | NO_WRITE_ERRNOS
