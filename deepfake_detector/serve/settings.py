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
    batch_window_ms: float = 0.0  # batch the network across concurrent requests for up to this long (0 = off)
    extra: dict = field(default_factory=dict)  # free-form values shown by /api/v1/model
    # connections: what an idle or slow client can hold (see timeouts.py)
    max_connections: int = 512  # open connections (uvicorn's limit_concurrency); more get 503
    header_timeout_s: float = 10.0  # a new connection must send complete request headers within this
    keep_alive_s: float = 5.0  # an idle keep-alive connection is closed after this
    body_idle_timeout_s: float = 30.0  # no body byte for this long: 408
    min_upload_rate_kbs: float = 1.0  # KiB/s on average after ``upload_grace_s``; slower: 408 (0 = off)
    upload_grace_s: float = 10.0  # the average upload rate is only judged after this many seconds
    # bodies being received (before an analysis slot is taken), and what they may occupy on disk
    max_bodies: int = 64  # request bodies received at the same time; more get 503
    body_budget_mb: Optional[float] = None  # their total size (default: max(1024, 2 x max_upload_mb))
    # asynchronous jobs and the result cache (by the upload's SHA-256)
    max_jobs: int = 1000  # job records kept (queued, processing and finished); more get 503
    jobs_mb: float = 256.0  # memory for finished jobs' results (oldest finished jobs go first)
    job_ttl_s: float = 3600.0  # a finished job (and a cached result) is forgotten after this
    cache_entries: int = 1024  # verdicts kept by SHA-256 (0 = no cache)
    cache_mb: float = 64.0  # their total size in memory (heat-map PNGs included)

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
        if not 0.0 <= float(self.batch_window_ms) <= 1000.0:
            raise ValueError("the batching window must be between 0 (off) and 1000 ms")
        self._check_connection_limits()
        if self.token is not None:
            self.token = self.token.strip()
            if not self.token:
                raise ValueError("token must not be empty (leave it unset to disable authentication)")
            if any(ch.isspace() for ch in self.token) or not self.token.isprintable():
                raise ValueError("token must be printable and contain no whitespace")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin must be '*' or start with http:// or https://: {origin!r}")

    def _check_connection_limits(self) -> None:
        if int(self.max_connections) < 8:
            raise ValueError("max_connections must be >= 8")
        for name in ("header_timeout_s", "keep_alive_s", "body_idle_timeout_s", "job_ttl_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0 seconds")
        if float(self.min_upload_rate_kbs) < 0 or float(self.upload_grace_s) < 0:
            raise ValueError("min_upload_rate_kbs and upload_grace_s must be >= 0")
        if int(self.max_bodies) < 1 or int(self.max_jobs) < 1:
            raise ValueError("max_bodies and max_jobs must be >= 1")
        if int(self.cache_entries) < 0 or float(self.cache_mb) < 0:
            raise ValueError("cache_entries and cache_mb must be >= 0")
        if not float(self.jobs_mb) > 0:
            raise ValueError("jobs_mb must be > 0")
        if self.body_budget_mb is not None and float(self.body_budget_mb) < float(self.max_upload_mb) + 1:
            raise ValueError("the body budget must be at least --max-upload-mb + 1 MB (the multipart "
                             "envelope), or the largest upload could never be received")

    @property
    def body_budget_bytes(self) -> int:
        """Bytes of request bodies being received at once (reserved from Content-Length or as they come)."""
        if self.body_budget_mb is not None:
            return int(float(self.body_budget_mb) * MIB)
        return int(max(1024.0, 2 * float(self.max_upload_mb)) * MIB)

    @property
    def min_upload_rate(self) -> float:
        """Bytes per second a body must average once ``upload_grace_s`` has passed (0: not checked)."""
        return float(self.min_upload_rate_kbs) * 1024.0

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
            "upload_timeout_s": float(self.upload_timeout_s),
            "auth": self.token is not None,
            "job_ttl_s": float(self.job_ttl_s),
            "batch_window_ms": float(self.batch_window_ms),
        }


def token_from_env(environ: Optional[dict] = None) -> Optional[str]:
    """The token from ``DEEPFAKE_DETECTOR_TOKEN`` (None when unset or blank)."""
    value = (environ if environ is not None else os.environ).get(TOKEN_ENV, "")
    return value.strip() or None
