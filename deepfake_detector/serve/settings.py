"""Settings of the HTTP server: every limit that protects the machine from its users is here.

The defaults are safe for a workstation: bind to localhost, no CORS, 200 MB uploads, one inference
at a time with a short waiting queue. Anything more open (a public host, a token, CORS origins) has
to be asked for explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

#: Environment variable read by ``deepfake-detector serve`` when ``--token`` is not given (an
#: environment variable does not show up in ``ps`` the way a command-line argument does).
TOKEN_ENV = "DEEPFAKE_DETECTOR_TOKEN"

MIB = 1024 * 1024


@dataclass
class ServeSettings:
    """Limits and options of one server instance (validated on creation)."""

    host: str = "127.0.0.1"  # loopback only unless asked: the server screens untrusted uploads
    port: int = 8000
    max_upload_mb: float = 200.0  # size limit of the uploaded file, enforced while streaming
    workers: int = 1  # inferences running at the same time (threads sharing the one loaded model)
    token: Optional[str] = None  # bearer token required on /api/v1/* when set
    queue_size: int = 4  # requests that may wait for a worker; more get 503 + Retry-After
    request_timeout_s: float = 120.0  # time limit for waiting in the queue + probing + inference
    upload_timeout_s: float = 300.0  # time limit for receiving the request body (slow clients)
    cors_origins: tuple[str, ...] = ()  # no CORS headers at all unless origins are listed
    tmp_dir: Optional[str] = None  # parent of the private upload folder (default: the system temp dir)
    retry_after_s: int = 5  # value of the Retry-After header on 503
    max_parts: int = 8  # multipart parts accepted in one request (only ``file`` is used)
    max_explain_mb: float = 32.0  # largest heat-map PNG returned inline as base64
    probe_max_packets: int = 500  # packets read while looking for the first decodable video frame
    max_video_side: int = 8192  # uploads whose video claims a larger width/height are refused (415)
    warmup: bool = True  # run one tiny synthetic video through the model at start-up (fast first request)
    extra: dict = field(default_factory=dict)  # free-form values shown by /api/v1/model

    def __post_init__(self) -> None:
        if isinstance(self.cors_origins, (list, str)):
            self.cors_origins = (self.cors_origins,) if isinstance(self.cors_origins, str) \
                else tuple(self.cors_origins)
        if not 0 <= int(self.port) <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if not 0 < float(self.max_upload_mb) <= 1024 * 1024:
            raise ValueError("max_upload_mb must be > 0")
        if int(self.workers) < 1:
            raise ValueError("workers must be >= 1")
        if int(self.queue_size) < 0:
            raise ValueError("queue_size must be >= 0")
        if float(self.request_timeout_s) <= 0 or float(self.upload_timeout_s) <= 0:
            raise ValueError("timeouts must be > 0 seconds")
        if int(self.retry_after_s) < 1:
            raise ValueError("retry_after_s must be >= 1")
        if int(self.max_parts) < 1:
            raise ValueError("max_parts must be >= 1")
        if self.token is not None:
            self.token = self.token.strip()
            if not self.token:
                raise ValueError("token must not be empty (leave it unset to disable authentication)")
            if any(ch.isspace() for ch in self.token) or not self.token.isprintable():
                raise ValueError("token must be printable and contain no whitespace")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin must be '*' or start with http:// or https://: {origin!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(float(self.max_upload_mb) * MIB)

    @property
    def capacity(self) -> int:
        """Requests admitted at once (running + waiting); one more is answered 503."""
        return int(self.workers) + int(self.queue_size)

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")

    def public_dict(self) -> dict:
        """The limits a client may know (never the token)."""
        return {
            "max_upload_mb": float(self.max_upload_mb),
            "workers": int(self.workers),
            "queue_size": int(self.queue_size),
            "request_timeout_s": float(self.request_timeout_s),
            "auth": self.token is not None,
        }


def token_from_env(environ: Optional[dict] = None) -> Optional[str]:
    """The token from ``DEEPFAKE_DETECTOR_TOKEN`` (None when unset or blank)."""
    value = (environ if environ is not None else os.environ).get(TOKEN_ENV, "")
    return value.strip() or None
