"""Observability: Prometheus metrics (``GET /metrics``) and one structured access-log line per request.

Each app has its own ``CollectorRegistry`` (several apps in one process, as in the tests, never
clash, and nothing lands in the global default registry). Counters and histograms are updated as
requests go; gauges (queue depth, bodies in flight, jobs, cache) are read from the server state at
scrape time, so they can never drift from the truth.

Label values are bounded: the route is the route *template* (``/api/v1/jobs/{job_id}``, never a job
id), unknown paths are ``other``, methods outside the usual few are ``OTHER``. The access log has the
same fields and never a query string, header or body, so a secret a client put in a URL is not
written anywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily

access_log = logging.getLogger("deepfake_detector.serve.access")

NAMESPACE = "deepfake_detector"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ANALYSIS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Metrics:
    """The app's metrics, in a registry of its own; ``state_reader`` supplies the gauges at scrape time."""

    def __init__(self, state_reader: Optional[Callable[[], dict]] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg, ns = self.registry, NAMESPACE
        self.requests = Counter("http_requests", "HTTP requests answered, by route template, method and "
                                "status", ["route", "method", "status"], namespace=ns, registry=reg)
        self.latency = Histogram("http_request_duration_seconds", "Time from request headers to the end "
                                 "of the response", ["route"], namespace=ns, registry=reg,
                                 buckets=_LATENCY_BUCKETS)
        self.analysis = Histogram("analysis_seconds", "Probe + model time of one analysis in a worker "
                                  "thread", namespace=ns, registry=reg, buckets=_ANALYSIS_BUCKETS)
        self.queue_wait = Histogram("queue_wait_seconds", "Time an upload waited for a worker thread",
                                    namespace=ns, registry=reg, buckets=_ANALYSIS_BUCKETS)
        self.batch_size = Histogram("batch_clips", "Clips per network call of the request batcher "
                                    "(--batch-window-ms; no observations when off)", namespace=ns,
                                    registry=reg, buckets=_BATCH_BUCKETS)
        self.rejected = Counter("uploads_rejected", "Uploads refused, by reason (too_large, busy, "
                                "body_budget, upload_timeout, not_video, ...)", ["reason"], namespace=ns,
                                registry=reg)
        self.cache = Counter("result_cache_lookups", "Result-cache lookups by the upload's SHA-256: hit, "
                             "shared (joined an analysis in progress) or miss", ["outcome"], namespace=ns,
                             registry=reg)
        self.timeouts = Counter("connections_timed_out", "Connections closed because their request "
                                "headers did not arrive in time", namespace=ns, registry=reg)
        self.model = Info("model", "The loaded model (labels) ", namespace=ns, registry=reg)
        if state_reader is not None:
            reg.register(_StateCollector(state_reader))

    def header_timeout(self) -> None:
        self.timeouts.inc()

    def reject(self, reason: str) -> None:
        if reason:
            self.rejected.labels(reason=reason).inc()

    def set_model(self, info: dict, calibrated: bool) -> None:
        """Model information as labels of ``deepfake_detector_model_info`` (no paths, short values)."""
        legacy = info.get("legacy") or {}
        labels = {
            "name": str(info.get("name") or ""), "sha256": str(info.get("sha256") or "")[:16],
            "version": str(info.get("version") or ""), "runtime": str(info.get("runtime") or "pytorch"),
            "device": str(info.get("device") or ""), "threshold": str(info.get("threshold", "")),
            "legacy_mode": str(legacy.get("mode") or "") if isinstance(legacy, dict) else "",
            "calibrated": "true" if calibrated else "false",
        }
        self.model.info({k: v[:64] for k, v in labels.items()})

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector:
    """Gauges read from the server state when scraped."""

    def __init__(self, reader: Callable[[], dict]) -> None:
        self.reader = reader

    def describe(self) -> list:
        return []  # values exist only at scrape time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.reader()
        for name, doc, value in (
            ("queue_depth", "Uploads admitted for analysis (running + waiting)", snap.get("in_flight", 0)),
            ("analyses_running", "Analyses running in worker threads", snap.get("running", 0)),
            ("analysis_capacity", "workers + queue size", snap.get("capacity", 0)),
            ("bodies_in_flight", "Request bodies being received", snap.get("bodies", 0)),
            ("body_bytes_reserved", "Bytes reserved by request bodies being received", snap.get("bytes", 0)),
            ("result_cache_entries", "Verdicts kept by SHA-256", snap.get("cache_entries", 0)),
        ):
            yield GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, value=float(value))
        jobs = GaugeMetricFamily(f"{NAMESPACE}_jobs", "Jobs in the job store, by state", labels=["state"])
        for state, count in sorted((snap.get("jobs") or {}).items()):
            jobs.add_metric([state], float(count))
        yield jobs


def route_label(scope: dict, routes: Sequence[Any] = ()) -> str:
    """The route template of a request (bounded label values); ``other`` when no route matches.

    The router records the route it chose; a request refused before routing (a token in the URL,
    a body deadline) is matched against ``routes`` here.
    """
    if str(scope.get("path", "")).startswith("/static/"):
        return "/static"
    route = scope.get("route")
    if route is None:
        from starlette.routing import Match

        route = next((r for r in routes if isinstance(getattr(r, "path", None), str)
                      and r.matches(scope)[0] != Match.NONE), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "other"


class Observe:
    """Pure ASGI middleware: request metrics and the access log, one line per request, no secrets."""

    def __init__(self, app: Callable, metrics_for: Callable[[], Optional[Metrics]],
                 routes_for: Callable[[], Sequence[Any]] = tuple) -> None:
        self.app = app
        self.metrics_for = metrics_for
        self.routes_for = routes_for

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        seen = {"status": 0, "in": 0, "out": 0}

        async def counting_receive() -> dict:
            message = await receive()
            seen["in"] += len(message.get("body") or b"")
            return message

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = int(message["status"])
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body") or b"")
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            seen["status"] = seen["status"] or 500  # answered 500 by the outermost error handler
            raise
        finally:
            self._record(scope, seen, time.perf_counter() - t0)

    def _record(self, scope: dict, seen: dict, seconds: float) -> None:
        method = str(scope.get("method", "")).upper()
        method = method if method in _METHODS else "OTHER"
        route = route_label(scope, self.routes_for())
        status = seen["status"] or 499  # the client went away before any answer
        metrics = self.metrics_for()
        if metrics is not None:
            metrics.requests.labels(route=route, method=method, status=str(status)).inc()
            metrics.latency.labels(route=route).observe(seconds)
        client = scope.get("client") or ("-", 0)
        fields = {"method": method, "route": route, "status": status, "duration_ms": round(seconds * 1000, 1),
                  "bytes_in": seen["in"], "bytes_out": seen["out"], "client": str(client[0])}
        access_log.info(" ".join(f"{k}={v}" for k, v in fields.items()), extra={"http": fields})
