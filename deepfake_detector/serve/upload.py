"""Receiving and checking an upload: streamed to a private file, then checked by decoding.

- The upload is parsed from ``request.stream()`` with ``python_multipart``'s streaming parser and
  written straight to the request's private folder, counting bytes on the way, so a too-large upload
  is refused (413) long before it is read in full and nothing is ever buffered in memory.
- The content is checked by decoding (PyAV with a demuxer allow-list, one frame decoded), never by the
  file name: images, playlists, audio-only files and random bytes get 415.
- The body is hashed (SHA-256) while it streams, so the result cache costs no second read.
- The file is stored inside the request's random 0700 folder under a name WE make (:func:`stored_name`:
  printable characters of the client's base name, no separators, a known video extension or ``.bin``),
  so the heat map can show the real name; the folder is never chosen by the client.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional

from starlette.requests import Request

from ..constants import VIDEO_EXTENSIONS
from .admission import BodyReservation, RequestFiles
from .responses import ErrorReply
from .settings import ServeSettings

#: Bytes a multipart envelope may add around the file (boundaries, part headers, small fields).
MULTIPART_OVERHEAD = 64 * 1024

#: Demuxers an upload may be read with. Everything else (image pipes, GIFs, which the pipeline refuses
#: as still images, HLS/concat playlists that can reference other files, raw formats guessed from
#: noise) is refused (415) before the model sees it.
ALLOWED_DEMUXERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "flv", "mpeg",
    "ogg", "asf", "h264", "hevc", "m4v", "dv",
)

class NotAVideo(Exception):
    """The upload could not be decoded as a video (answered 415)."""


_REASONS = {400: "bad_request", 413: "too_large", 415: "not_multipart"}


class _UploadError(ErrorReply):
    """A request body the server will not take (400, 413, 415), refused while or before reading it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail, reason=_REASONS.get(status, ""))


# --------------------------------------------------------------------------------------------------
# Content check by decoding
# --------------------------------------------------------------------------------------------------


def probe_video(path: str | os.PathLike, max_packets: int = 500, max_side: int = 8192) -> dict:
    """Decode the first frame of ``path`` with an allow-listed demuxer, else raise :class:`NotAVideo`.

    This is the server's content check: the file name says nothing, so the bytes must open as a
    known video container with a video stream whose first frame really decodes.
    """
    import av

    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise NotAVideo("the uploaded file is empty")
    if head.lstrip().startswith((b"#EXTM3U", b"ffconcat")):
        raise NotAVideo("playlists are not accepted; upload the video file itself")
    try:
        container = av.open(str(path), options={"format_whitelist": ",".join(ALLOWED_DEMUXERS)})
    except Exception as exc:  # noqa: BLE001 - any demuxer failure means "not a video we accept"
        raise NotAVideo("not a readable video file (no known container format found)") from exc
    try:
        if not container.streams.video:
            raise NotAVideo("the file has no video stream (audio only?)")
        stream = container.streams.video[0]
        width = int(stream.codec_context.width or 0)
        height = int(stream.codec_context.height or 0)
        if width > max_side or height > max_side:
            raise NotAVideo(f"video dimensions {width}x{height} exceed the limit of {max_side} pixels")
        return _first_frame(container, stream, max_packets)
    finally:
        container.close()


def _first_frame(container: Any, stream: Any, max_packets: int) -> dict:
    """Demux up to ``max_packets`` packets until one frame decodes; describe the video by it."""
    packets = 0
    try:
        for packet in container.demux(stream):
            packets += 1
            for frame in packet.decode():
                return {
                    "format": container.format.name,
                    "codec": stream.codec_context.name,
                    "width": int(frame.width),
                    "height": int(frame.height),
                    "duration": float(container.duration / 1e6) if container.duration else None,
                }
            if packets >= max_packets:
                break
    except Exception as exc:  # noqa: BLE001
        raise NotAVideo("the video stream could not be decoded") from exc
    raise NotAVideo("no frame of the video stream could be decoded")


# --------------------------------------------------------------------------------------------------
# Streaming multipart upload
# --------------------------------------------------------------------------------------------------


def _content_disposition(value: bytes) -> tuple[Optional[str], Optional[str]]:
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(value)
    if kind != b"form-data":
        return None, None
    name = params.get(b"name")
    filename = params.get(b"filename")
    return (name.decode("utf-8", "replace") if name is not None else None,
            filename.decode("utf-8", "replace") if filename is not None else None)


def _safe_display_name(name: Optional[str]) -> str:
    """The client's file name for display only (never used as a path)."""
    if not name:
        return ""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())
    if len(name) > 200:  # shortened, keeping a short extension
        stem, ext = os.path.splitext(name)
        name = stem[: 200 - len(ext)] + ext if len(ext) <= 16 else name[:200]
    return name


def _suffix_for(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    return suffix if suffix in VIDEO_EXTENSIONS else ".bin"


def stored_name(display_name: str) -> str:
    """The name an upload is stored under: the client's base name made harmless, with our suffix.

    ``display_name`` is already a printable base name (:func:`_safe_display_name`); here separators,
    leading dots and over-long or unencodable names are removed, and the extension is replaced by a
    known video extension or ``.bin``. Empty results become ``upload``.
    """
    stem = os.path.splitext(display_name)[0]
    stem = "".join("_" if ch in "/\\\0:" else ch for ch in stem).strip().lstrip(".")[:80].strip()
    try:
        if len(os.fsencode(stem)) > 200:
            stem = ""
    except UnicodeError:  # not representable in the file system's encoding
        stem = ""
    return (stem or "upload") + _suffix_for(display_name)


def _body_limit(settings: ServeSettings) -> int:
    """Largest request body accepted: the file limit plus the multipart envelope of every allowed part."""
    return settings.max_upload_bytes + MULTIPART_OVERHEAD * settings.max_parts


def _file_too_large(settings: ServeSettings) -> str:
    return f"the file is larger than the limit of {settings.max_upload_mb:g} MB"


def multipart_boundary(headers: Mapping[str, str], settings: ServeSettings) -> bytes:
    """The boundary of a multipart upload, checked from the headers alone, before anything is admitted.

    Raises :class:`_UploadError`: 415 when not multipart/form-data, 400 for a missing or absurd
    boundary or a bad Content-Length, 413 when the announced length is already over the limit.
    """
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise _UploadError(415, "send the video as multipart/form-data with the field 'file'")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise _UploadError(400, "multipart/form-data without a valid boundary")
    length = headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise _UploadError(400, "invalid Content-Length") from None
        if n > _body_limit(settings):
            raise _UploadError(413, _file_too_large(settings))
    return boundary


class _FilePartWriter:
    """The multipart parser's callbacks: the first ``file`` part goes to ``path``, others are skipped.

    The file is created exclusively (0600, no symlink followed) and counted while written, so the
    size limit holds whatever the client announced.
    """

    def __init__(self, path: Path, settings: ServeSettings) -> None:
        self.path = path
        self.settings = settings
        self.parts = 0
        self.field = b""
        self.value = b""
        self.headers: dict[bytes, bytes] = {}
        self.target: Any = None
        self.file_seen = False
        self.file_done = False
        self.size = 0
        self.filename = ""
        self.sha256 = hashlib.sha256()

    def callbacks(self) -> dict[str, Callable]:
        return {
            "on_part_begin": self.on_part_begin, "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end, "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    def on_part_begin(self) -> None:
        self.parts += 1
        self.headers = {}
        self.target = None
        if self.parts > self.settings.max_parts:
            raise _UploadError(400, f"too many multipart parts (at most {self.settings.max_parts})")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field = b""
        self.value = b""

    def on_headers_finished(self) -> None:
        name, filename = _content_disposition(self.headers.get(b"content-disposition", b""))
        if name == "file" and not self.file_seen:  # with or without a filename= parameter
            self.file_seen = True
            self.filename = _safe_display_name(filename)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(self.path, flags, 0o600)
            self.target = os.fdopen(fd, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.target is None:
            return  # other fields are ignored, never buffered
        n = end - start
        if self.size + n > self.settings.max_upload_bytes:
            raise _UploadError(413, _file_too_large(self.settings))
        chunk = data[start:end]
        self.target.write(chunk)
        self.sha256.update(chunk)
        self.size += n

    def on_part_end(self) -> None:
        if self.target is not None:
            self.close()
            self.file_done = True

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None

    def result(self) -> dict:
        """Name and size of the complete file, or :class:`_UploadError` (400) if there is none."""
        if not self.file_seen:
            raise _UploadError(400, "missing multipart field 'file' (send the video as form field 'file')")
        if not self.file_done:
            raise _UploadError(400, "the multipart body ended before the file was complete")
        if self.size == 0:
            raise _UploadError(400, "the uploaded file is empty")
        return {"filename": self.filename, "size": self.size, "sha256": self.sha256.hexdigest()}


def _budget_full(settings: ServeSettings) -> ErrorReply:
    return ErrorReply(503, "too many uploads are being received right now; retry later",
                      {"Retry-After": str(settings.retry_after_s)}, reason="body_budget")


async def _stream_upload(request: Request, files: RequestFiles, boundary: bytes, settings: ServeSettings,
                         reservation: Optional[BodyReservation] = None) -> dict:
    """Stream the multipart body; write the ``file`` part to ``files.upload``; return name, size, sha256.

    Raises :class:`_UploadError` (400/413) on a bad or too-large body, and a 503 when the bytes that
    really arrive do not fit the ``reservation`` of the body budget; partial files are removed by the
    caller's ``files.drop()``.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    body_limit = _body_limit(settings)
    writer = _FilePartWriter(files.upload, settings)
    parser = MultipartParser(boundary, callbacks=writer.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            if not chunk:
                continue
            received += len(chunk)
            if received > body_limit:
                raise _UploadError(413, f"the request body is larger than the limit of "
                                        f"{settings.max_upload_mb:g} MB")
            if reservation is not None and not reservation.cover(received):
                raise _budget_full(settings)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise _UploadError(400, f"malformed multipart body: {exc}") from exc
    finally:
        writer.close()
    return writer.result()
