"""``mlship web``: the Flask app (webhooks, API, pages) under gunicorn, settings from the environment.

The app is created once in the gunicorn master before any worker starts, so a configuration error
(an unset or empty webhook secret, a bad key in MLSHIP_CONFIG) stops the command at once with
the message, instead of every worker dying in a loop. Redis clients connect lazily, after the fork.

Readers must never starve the webhook (GitHub waits 10 s, then gives up for good): the default
worker class is gevent, so a live-log stream or a client sending its body a byte at a time costs a
greenlet, not one of a few threads; streams are capped per process and per client (web/api.py),
and a request body must arrive within ``--body-timeout`` seconds (BodyDeadline).
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import RequestTimeout

from orchestrator.cli import EnvDefault, command
from orchestrator.config import env_get


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bind",
        default=EnvDefault("BIND", "127.0.0.1:8000"),
        help="host:port to listen on (default 127.0.0.1:8000)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=EnvDefault("WEB_WORKERS", 2, int),
        help="gunicorn worker processes (default 2)",
    )
    # Threads hide Redis round-trip latency (measured: 4x4 gthread ~2x the deliveries/s of 3 sync
    # workers on 2 CPUs) and keep a live-log stream from holding a whole worker.
    p.add_argument(
        "--threads",
        type=int,
        default=EnvDefault("WEB_THREADS", 4, int),
        help="threads per worker; more than 1 selects the gthread worker (default 4)",
    )
    p.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default=env_get("WEB_WORKER_CLASS") or "gevent",
        help="gevent (default: streams and slow clients cost a greenlet each), gthread or sync",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=float(env_get("WEB_BODY_TIMEOUT") or "10"),
        help="seconds a client has to send a request body (default 10); then 408",
    )
    p.add_argument("--timeout", type=int, default=60, help="seconds before gunicorn restarts a silent worker")
    p.add_argument("--access-log", action="store_true", help="also write gunicorn's access log to stderr")


WORKER_CLASSES = ("gevent", "gthread", "sync")
GEVENT_CONNECTIONS = 1000  # open connections per gevent worker (streams, keep-alive, slow clients)
TOO_SLOW = "the request body did not arrive in time (--body-timeout)"


def gunicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """The gunicorn settings for these arguments (pure, tested as data)."""
    if args.workers < 1 or args.threads < 1:
        from orchestrator.errors import ConfigError

        raise ConfigError("--workers and --threads must be at least 1")
    worker_class = getattr(args, "worker_class", None) or ("gthread" if args.threads > 1 else "sync")
    extra = {"worker_connections": GEVENT_CONNECTIONS} if worker_class == "gevent" else {}
    return {
        **extra,
        "bind": [args.bind],
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": worker_class,
        "timeout": args.timeout,
        "graceful_timeout": 10,
        "keepalive": 5,
        "accesslog": "-" if args.access_log else None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "orchestrator-web",
        # A delivery must not wait on a slow client while holding a sync worker: gunicorn reads
        # headers itself; bodies are bounded by max_body_bytes in the app.
        "limit_request_field_size": 16384,
    }


class _DeadlineInput:
    """``wsgi.input`` that must be read to the end before a deadline. Under gevent a Timeout bounds
    each read as a whole (a byte every second cannot stretch it); otherwise the socket's timeout
    bounds each wait for data."""

    def __init__(self, stream: Any, sock: socket.socket | None, deadline: float) -> None:
        self.stream, self.sock, self.deadline = stream, sock, deadline

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(TOO_SLOW)
        if _gevent_patched():
            import gevent

            with gevent.Timeout(left, RequestTimeout(TOO_SLOW)):
                return fn(*args)
        previous = self.sock.gettimeout() if self.sock is not None else None
        if self.sock is not None:
            self.sock.settimeout(left)
        try:
            return fn(*args)
        except TimeoutError as exc:
            raise RequestTimeout(TOO_SLOW) from exc
        finally:
            if self.sock is not None:
                self.sock.settimeout(previous)

    def read(self, *args: Any) -> bytes:
        return bytes(self._call(self.stream.read, *args))

    def readline(self, *args: Any) -> bytes:
        return bytes(self._call(self.stream.readline, *args))

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))


class BodyDeadline:
    """WSGI middleware: a request body must arrive within ``seconds``, else 408.

    A body with a Content-Length up to ``buffer_bytes`` is read here, whole, before the app runs
    (the webhook's fast path included): the app never waits on a slow client. Larger or chunked
    bodies are read by the app through the same deadline (werkzeug's RequestTimeout → 408)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float, buffer_bytes: int = 0) -> None:
        self.app, self.seconds, self.buffer_bytes = app, seconds, buffer_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = _content_length(environ)
        if length or environ.get("HTTP_TRANSFER_ENCODING"):
            stream = _DeadlineInput(
                environ["wsgi.input"], environ.get("gunicorn.socket"), time.monotonic() + self.seconds
            )
            environ["wsgi.input"] = stream
            if length and length <= self.buffer_bytes:
                try:
                    environ["wsgi.input"] = io.BytesIO(_read_exactly(stream, length))
                except RequestTimeout:
                    return _too_slow(start_response)
        try:
            return self.app(environ, start_response)
        except RequestTimeout:  # from a WSGI path outside Flask
            return _too_slow(start_response)


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return max(0, int(environ.get("CONTENT_LENGTH") or 0))
    except ValueError:
        return 0


def _read_exactly(stream: _DeadlineInput, length: int) -> bytes:
    chunks, got = [], 0
    while got < length:
        chunk = stream.read(min(1 << 16, length - got))
        if not chunk:
            break  # the client closed early: the app sees the short body and says so
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _too_slow(start_response: Callable[..., Any]) -> list[bytes]:
    body = json.dumps({"error": {"code": "request_timeout", "message": TOO_SLOW}}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response("408 Request Timeout", [*headers, ("Connection", "close")])
    return [body]


def serve(app: Any, options: dict[str, Any]) -> None:
    """Run ``app`` under gunicorn in this process (blocks until gunicorn stops)."""
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _Server().run()


@command("web", "serve the webhook endpoint, API and status pages under gunicorn", _configure)
def web(args: argparse.Namespace) -> int:
    from orchestrator import create_app
    from orchestrator import servicelog as applog
    from orchestrator.config import load_settings

    if args.worker_class == "gevent":
        # Before the app and its locks exist: a lock made before patching is a real one, and a
        # greenlet that waits on it while another holds it across a switch stops the whole worker.
        from gevent import monkey

        monkey.patch_all()
    options = gunicorn_options(args)
    settings = load_settings()  # validated: names the key and the fix, exits 2 on error
    applog.configure(settings.secret_values())
    app = create_app(settings)
    app.wsgi_app = BodyDeadline(  # type: ignore[method-assign]
        app.wsgi_app, args.body_timeout, buffer_bytes=settings.max_body_bytes
    )
    applog.event(
        applog.get("web"),
        "start",
        bind=args.bind,
        workers=args.workers,
        threads=args.threads,
        worker_class=args.worker_class,
        repositories=sorted(settings.repositories),
    )
    serve(app, options)
    return 0
