"""``deepfake-detector serve CHECKPOINT``: the HTTP API and upload page under uvicorn."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from ..errors import UserError

HELP = "serve an HTTP API and an upload page for a trained checkpoint"
DESCRIPTION = (
    "Load CHECKPOINT once and serve POST /api/v1/predict (multipart field 'file'), POST /api/v1/jobs + "
    "GET /api/v1/jobs/ID (asynchronous), GET /api/v1/model, GET /healthz, GET /metrics (Prometheus), the "
    "OpenAPI docs at /docs and an upload page at /. Binds to 127.0.0.1 unless --host says otherwise. Set a "
    "bearer token with --token or the DEEPFAKE_DETECTOR_TOKEN environment variable (preferred: "
    "command-line arguments are visible to other users in 'ps')."
)


#: Ends a help text that already says its default: an empty rendering of ``%(default)s``, which also
#: stops argparse's defaults formatter from appending "(default: None)" after it.
_DEFAULT_SAID = "%(default).0s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="trained checkpoint (.pt), or a model.onnx written by 'export' (ONNX Runtime)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; 0.0.0.0 exposes the server to the network")
    parser.add_argument("--port", type=int, default=8000, help="TCP port")
    parser.add_argument("--max-upload-mb", type=float, default=200.0, help="largest accepted upload (MB)")
    parser.add_argument("--workers", type=int, default=1,
                        help="inferences at the same time (threads sharing the loaded model)")
    parser.add_argument("--queue-size", type=int, default=4,
                        help="requests that may wait for a worker; more are answered 503 with Retry-After")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="per-request time limit (s) for queueing + analysis; 504 when exceeded")
    parser.add_argument("--upload-timeout", type=float, default=300.0,
                        help="time limit (s) for receiving one upload; 408 when exceeded")
    parser.add_argument("--token", default=None,
                        help="require 'Authorization: Bearer TOKEN' on /api/v1/*; 'generate' makes a random "
                             "one and prints it (default: $DEEPFAKE_DETECTOR_TOKEN, else no authentication)"
                             + _DEFAULT_SAID)
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from this origin (repeatable); no CORS by default"
                             + _DEFAULT_SAID)
    parser.add_argument("--tmp-dir", default=None,
                        help="parent folder of the private upload folder (default: the system temp dir)"
                             + _DEFAULT_SAID)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--compile", action="store_true",
                        help="run the network through torch.compile (GPU; the warm-up request pays it)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="override the checkpoint's decision threshold on P(FAKE) "
                             "(default: the checkpoint's)" + _DEFAULT_SAID)
    parser.add_argument("--no-calibration", action="store_true",
                        help="report the model's raw scores, not the checkpoint's calibrated probabilities "
                             "(the default threshold follows, so verdicts do not change)")
    parser.add_argument("--batch-window-ms", type=float, default=0.0, metavar="MS",
                        help="batch the network across concurrent uploads: wait up to MS for other workers' "
                             "clips and score them in one forward pass (for a GPU with --workers 4 or more; "
                             "decoding stays per worker; 0 = off)")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the start-up run of a tiny synthetic video (the first request is then "
                             "slower; default: warm up)" + _DEFAULT_SAID)
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="log level; 'info' includes one access-log line per request")
    _add_legacy_arguments(parser)
    _add_connection_arguments(parser)
    _add_job_arguments(parser)


def _add_legacy_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("reference-implementation checkpoints (as for predict; see docs/legacy.md)")
    g.add_argument("--legacy", action="store_true",
                   help="the checkpoint is a reference-implementation state dict (auto-detected with a "
                        "warning)")
    g.add_argument("--legacy-mode", choices=["fixed", "exact"], default="fixed",
                   help="'exact' reproduces the reference's numbers (use it for scoring), 'fixed' maps the "
                        "weights onto our model")
    g.add_argument("--legacy-frames", type=int, default=None,
                   help="frames per video it was trained with (default: from the file name, else 20)"
                        + _DEFAULT_SAID)
    g.add_argument("--legacy-preprocess", choices=["reference", "ours"], default=None,
                   help="'reference' (first frames, tight dlib crops; default with exact) or 'ours' "
                        "(default with fixed)" + _DEFAULT_SAID)
    g.add_argument("--legacy-readout", choices=["last", "mean"], default=None,
                   help="exact mode: 'last' = the LSTM output of the last frame, what the reference's "
                        "predict code scored (default); 'mean' = the average over frames" + _DEFAULT_SAID)


def _add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connections and uploads (what an idle or slow client can hold)")
    g.add_argument("--max-connections", type=int, default=512,
                   help="open connections at once; more are answered 503")
    g.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send complete request headers (idle ones are closed)")
    g.add_argument("--keep-alive-timeout", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open after a response")
    g.add_argument("--body-idle-timeout", type=float, default=30.0,
                   help="seconds without a byte of the upload before it is cut off (408)")
    g.add_argument("--min-upload-rate", type=float, default=1.0, metavar="KIB_PER_S",
                   help="slowest average upload rate accepted after the first 10 s, KiB/s (408; 0 = off)")
    g.add_argument("--max-bodies", type=int, default=64,
                   help="uploads being received at once (before a worker is needed); more get 503")
    g.add_argument("--body-budget-mb", type=float, default=None,
                   help="total MB of uploads being received at once (default: max(1024, 2 x --max-upload-mb))"
                        + _DEFAULT_SAID)


def _add_job_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("asynchronous jobs and the result cache")
    g.add_argument("--max-jobs", type=int, default=1000,
                   help="jobs kept (queued, running and finished); more get 503")
    g.add_argument("--jobs-mb", type=float, default=256.0,
                   help="memory for finished jobs' results (MB); the oldest finished jobs are forgotten "
                        "first")
    g.add_argument("--job-ttl", type=float, default=3600.0,
                   help="seconds a finished job's result (and a cached verdict) is kept")
    g.add_argument("--cache-entries", type=int, default=1024,
                   help="verdicts kept by the upload's SHA-256, so the same video is analysed once (0 = off)")
    g.add_argument("--cache-mb", type=float, default=64.0, help="memory for those verdicts (MB)")


def _settings(args: argparse.Namespace):
    from ..serve.app import generate_token
    from ..serve.settings import ServeSettings, token_from_env

    token = args.token
    generated = False
    if token == "generate":
        token = generate_token()
        generated = True
    elif token is None:
        token = token_from_env()
    try:
        settings = ServeSettings(
            host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, workers=args.workers,
            token=token, queue_size=args.queue_size, request_timeout_s=args.timeout,
            upload_timeout_s=args.upload_timeout, cors_origins=tuple(args.cors_origin), tmp_dir=args.tmp_dir,
            warmup=not args.no_warmup, batch_window_ms=args.batch_window_ms,
            max_connections=args.max_connections,
            header_timeout_s=args.header_timeout, keep_alive_s=args.keep_alive_timeout,
            body_idle_timeout_s=args.body_idle_timeout, min_upload_rate_kbs=args.min_upload_rate,
            max_bodies=args.max_bodies, body_budget_mb=args.body_budget_mb, max_jobs=args.max_jobs,
            jobs_mb=args.jobs_mb,
            job_ttl_s=args.job_ttl, cache_entries=args.cache_entries, cache_mb=args.cache_mb,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return settings, generated


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once and let go, the way uvicorn will (``SO_REUSEADDR``), or raise UserError.

    Catches a port already in use, an address that is not this machine's and a privileged port before
    the model is loaded, with one line saying what to change. Another program can still take the port
    in between: uvicorn then reports it itself.
    """
    where = _address(host, port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"cannot listen on {where}: unknown host ({exc}); check --host") from None
    for family, kind, proto, _name, addr in {(i[0], i[1], i[2], i[3], i[4]) for i in infos}:
        try:
            with socket.socket(family, kind, proto) as sock:
                if os.name != "nt":  # as uvicorn / asyncio do; on Windows it would allow a second server
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == getattr(socket, "AF_INET6", None):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                why = "address already in use; choose another --port"
            elif exc.errno == errno.EADDRNOTAVAIL:
                why = "this machine has no such address; check --host (127.0.0.1 or 0.0.0.0)"
            elif exc.errno in (errno.EACCES, errno.EPERM):
                why = "permission denied (ports below 1024 need privileges); choose another --port"
            elif exc.errno == errno.EAFNOSUPPORT:
                continue  # e.g. IPv6 disabled: uvicorn will use the other addresses
            else:
                why = exc.strerror or str(exc)
            raise UserError(f"cannot listen on {where}: {why}") from None


def _detector_options(args: argparse.Namespace) -> dict:
    """``Detector.from_checkpoint`` keywords from the flags, as ``predict`` passes them."""
    opts: dict = {"device": args.device, "compile": args.compile}
    if args.threshold is not None:
        if not 0.0 <= args.threshold <= 1.0:
            raise UserError("--threshold must be between 0 and 1")
        opts["threshold"] = args.threshold
    if args.legacy_frames is not None and args.legacy_frames < 1:
        raise UserError("--legacy-frames must be >= 1")
    opts.update(legacy=True if args.legacy else None, legacy_mode=args.legacy_mode,
                legacy_frames=args.legacy_frames, legacy_preprocess=args.legacy_preprocess,
                legacy_readout=args.legacy_readout, calibration=not args.no_calibration)
    if args.batch_window_ms > 0:  # a batch holds up to one clip per worker: one forward pass for all
        opts["batch_size"] = max(8, args.workers)
    return opts


def _raise_open_files_limit(settings) -> None:
    """Let the process hold ``max_connections`` sockets plus files (the soft limit is often 1024)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    want = int(settings.max_connections) * 2 + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            new = soft
        if new < want:
            print(f"warning: the open-files limit ({new}) is low for --max-connections "
                  f"{settings.max_connections}; raise it (ulimit -n) or lower --max-connections",
                  file=sys.stderr)


def _configure_logging(level: str) -> None:
    """The server's own loggers (access log included) at ``--log-level``; uvicorn's are set by uvicorn."""
    import logging

    logging.getLogger("deepfake_detector.serve").setLevel(level.upper())


def run(args: argparse.Namespace) -> int:
    settings, generated = _settings(args)
    if not os.path.exists(args.checkpoint):
        raise UserError(f"checkpoint not found: {args.checkpoint}")
    try:
        import uvicorn

        from ..inference import Detector
        from ..serve.app import create_app
        from ..serve.timeouts import uvicorn_config
    except ImportError as exc:  # pragma: no cover - broken install
        raise UserError(f"cannot start the server: {exc}") from exc

    opts = _detector_options(args)
    check_can_listen(settings.host, settings.port)  # before the (slow) model load, not after it
    print(f"loading {args.checkpoint} ...", file=sys.stderr)
    # UserError on bad files
    detector = Detector.from_checkpoint(args.checkpoint, **opts)
    app = create_app(detector, settings)

    host = settings.host
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{settings.port}/"
    print(f"serving {args.checkpoint} at {url}  (API docs: {url}docs; Ctrl+C to stop)")
    if generated:
        print(f"bearer token: {settings.token}")
    if not settings.is_loopback:
        auth = "" if settings.token else " WITHOUT authentication (set --token or $DEEPFAKE_DETECTOR_TOKEN)"
        print(f"warning: listening on {host}, reachable from the network{auth}; "
              "put TLS (a reverse proxy) in front of it", file=sys.stderr)
    sys.stdout.flush()
    _raise_open_files_limit(settings)
    _configure_logging(args.log_level)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level=args.log_level))
    server.run()
    return 0 if server.started else 1
