"""Constants that several stages share, each defined once: labels, statuses, video file extensions.

Labels are the strings ``REAL``/``FAKE`` at the edges of the program; inside tensors class index 1
means FAKE. A status is what happened to one input video, in the cache manifest and in predictions.
"""

from __future__ import annotations

REAL = "REAL"
FAKE = "FAKE"
LABELS = (REAL, FAKE)
CLASS_NAMES = (REAL, FAKE)  # index 0 = REAL, index 1 = FAKE
SPLITS = ("train", "val", "test")

# Status of one video (manifest row or prediction).
OK = "ok"  # face clip made
NO_FACE = "no_face"  # no face found: clip is centre crops (or none with --no-face skip)
UNREADABLE = "unreadable"  # could not be opened or decoded
TOO_SHORT = "too_short"  # fewer decodable frames than needed
REFUSED = "refused"  # refused by a safety cap (absurd size, path outside root, ...)
MISSING = "missing"  # file does not exist
ERROR = "error"  # unexpected failure (a bug): reported per item, run goes on
STATUSES = (OK, NO_FACE, UNREADABLE, TOO_SHORT, REFUSED, MISSING, ERROR)
USABLE_STATUSES = (OK,)  # clips used for training and evaluation by default
SCORED_STATUSES = (OK, NO_FACE)  # clips that get a P(FAKE) (no_face: centre crops)

# File name endings taken as videos when a folder is listed (dataset folders, predict's folders) and
# kept for an upload's temporary file; anything else is still tried when named explicitly.
VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
    ".3gp", ".ts", ".mts", ".m2ts", ".ogv", ".asf", ".gif", ".h264", ".hevc",
)
