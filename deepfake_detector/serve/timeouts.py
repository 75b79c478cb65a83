"""Connection hygiene: no idle or slow client can hold a connection, a body slot or a worker for long.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no limit on how long a
client may take to send its request headers or its body. Both are added here:

- **headers**: :func:`header_timeout_protocol` is uvicorn's h11 protocol with one timer per
  connection: complete request headers must arrive within ``header_timeout_s`` of the connection
  opening (or of the first byte after a response), else the connection is closed. An idle connection
  that never sends a byte is closed the same way, so idle sockets cannot fill ``max_connections``.
- **body**: :class:`BodyTimeouts` wraps the ASGI ``receive`` of every request with a body: no byte for
  ``body_idle_timeout_s``, an average below ``min_upload_rate_kbs`` after ``upload_grace_s``, or more
  than ``upload_timeout_s`` in all raises :class:`ReceiveTimeout`, answered 408 with
  ``Connection: close``. The deadline is enforced *while waiting*, not only when a chunk arrives.

:func:`uvicorn_config` is the one place the server's uvicorn settings are made (the command and the
tests use it), so the limits that protect the server cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable, Optional

from .settings import ServeSettings

_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


class ReceiveTimeout(Exception):
    """The request body did not arrive in time (answered 408)."""


class _BodyClock:
    """The deadlines of one request body: total, idle and minimum average rate."""

    def __init__(self, settings: ServeSettings, receive: Callable) -> None:
        self.settings = settings
        self.inner = receive
        self.start = time.monotonic()
        self.received = 0
        self.done = False

    def _wait(self, now: float) -> tuple[float, str]:
        """Seconds the next chunk may take, and what to say when it does not come."""
        s = self.settings
        waits = [
            (self.start + float(s.upload_timeout_s) - now,
             f"the upload took longer than {float(s.upload_timeout_s):g} s"),
            (float(s.body_idle_timeout_s),
             f"the upload stalled: no data for {float(s.body_idle_timeout_s):g} s"),
        ]
        rate = s.min_upload_rate
        if rate > 0:
            # the moment the average falls below the minimum if nothing more arrives
            due = self.start + max(float(s.upload_grace_s), self.received / rate)
            waits.append((due - now, f"the upload is slower than the minimum of "
                                     f"{float(s.min_upload_rate_kbs):g} KiB/s"))
        return min(waits, key=lambda w: w[0])

    async def receive(self) -> dict:
        if self.done:  # the body is complete: waiting for a disconnect is not the client's upload time
            return await self.inner()
        wait, why = self._wait(time.monotonic())
        if wait <= 0:
            raise ReceiveTimeout(why)
        try:
            message = await asyncio.wait_for(self.inner(), timeout=wait)
        except asyncio.TimeoutError:
            raise ReceiveTimeout(why) from None
        if message.get("type") == "http.request":
            self.received += len(message.get("body") or b"")
            if not message.get("more_body", False):
                self.done = True
        return message


class BodyTimeouts:
    """Pure ASGI middleware: request bodies arrive within the deadlines of :class:`_BodyClock`, or 408.

    Handlers that stream the body catch :class:`ReceiveTimeout` themselves (to clean up); one that
    escapes is answered here, when no response has started yet.
    """

    def __init__(self, app: Callable, settings: ServeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method", "GET") in _BODYLESS:
            await self.app(scope, receive, send)
            return
        clock = _BodyClock(self.settings, receive)
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, clock.receive, tracking_send)
        except ReceiveTimeout as exc:
            if started:
                raise
            await send_408(send, str(exc))


async def send_408(send: Callable, detail: str) -> None:
    """A 408 with the usual JSON body, closing the connection (the client may still be sending)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 408, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(header_timeout_s: float, on_timeout: Optional[Callable[[], None]] = None) -> type:
    """uvicorn's h11 protocol, closing connections that do not send complete headers in time.

    The timer runs from the connection's opening, and again from the first byte after each response
    (a keep-alive connection that trickles its next request's headers); it stops when the headers are
    complete, after which the body deadlines of :class:`BodyTimeouts` apply. ``on_timeout`` is called
    for each connection closed this way (the metrics count them).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:  # complete headers: a request started
                self._disarm()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _expired(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                if on_timeout is not None:
                    on_timeout()
                self.transport.close()

    return HeaderTimeoutH11Protocol


def uvicorn_config(app: Any, settings: ServeSettings, log_level: str = "info", **overrides: Any) -> Any:
    """The server's uvicorn settings: header/keep-alive timeouts, connection limit, no access log of its own.

    uvicorn's access log writes the full URL (query strings included, where a careless client puts a
    token): our own access log (metrics.py) writes the route only. ``limit_concurrency`` counts open
    connections, so it is set well above the analysis queue and idle ones are closed by the timers.
    """
    import uvicorn

    state = getattr(getattr(app, "state", None), "serve", None)
    metrics = getattr(state, "metrics", None)
    on_timeout = metrics.header_timeout if metrics is not None else None
    options: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": log_level, "workers": 1,
        "http": header_timeout_protocol(float(settings.header_timeout_s), on_timeout),
        "limit_concurrency": int(settings.max_connections),
        "timeout_keep_alive": float(settings.keep_alive_s),
        "timeout_graceful_shutdown": 30,
        "server_header": False, "proxy_headers": False, "access_log": False, "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)
