"""``mlship web``: the Flask app (webhooks, API, pages) under gunicorn, settings from the environment.

The app is created once in the gunicorn master before any worker starts, so a configuration error
(an unset or empty webhook secret, a bad key in MLSHIP_CONFIG) stops the command at once with
the message, instead of every worker dying in a loop. Redis clients connect lazily, after the fork.
"""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli import EnvDefault, command


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
    p.add_argument("--timeout", type=int, default=60, help="seconds before gunicorn restarts a silent worker")
    p.add_argument("--access-log", action="store_true", help="also write gunicorn's access log to stderr")


def gunicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """The gunicorn settings for these arguments (pure, tested as data)."""
    if args.workers < 1 or args.threads < 1:
        from orchestrator.errors import ConfigError

        raise ConfigError("--workers and --threads must be at least 1")
    return {
        "bind": [args.bind],
        "workers": args.workers,
        "threads": args.threads,
        "worker_class": "gthread" if args.threads > 1 else "sync",
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

    options = gunicorn_options(args)
    settings = load_settings()  # validated: names the key and the fix, exits 2 on error
    applog.configure(settings.secret_values())
    app = create_app(settings)
    applog.event(
        applog.get("web"),
        "start",
        bind=args.bind,
        workers=args.workers,
        threads=args.threads,
        repositories=sorted(settings.repositories),
    )
    serve(app, options)
    return 0
