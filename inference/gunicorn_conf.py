"""gunicorn settings, from the environment.

    gunicorn -c inference/gunicorn_conf.py inference.wsgi:app

PORT (5000), WEB_CONCURRENCY (workers, 2), GUNICORN_THREADS (1: sync workers; >1: gthread),
GUNICORN_TIMEOUT (30), GUNICORN_PRELOAD (1), PROMETHEUS_MULTIPROC_DIR (a fresh temp dir).

The app is preloaded in the master: the model is read and checked once, shared by the
forked workers (copy-on-write), and a model that fails to load stops gunicorn before any
worker serves (exit status 1, the reason on stderr).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from typing import Any

# Must happen before prometheus_client is imported anywhere (it picks its storage at import).
_prom_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if not _prom_dir:
    _prom_dir = tempfile.mkdtemp(prefix="inference-prometheus-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _prom_dir
    _owner, _created = os.getpid(), _prom_dir

    def _remove_prom_dir() -> None:
        # Workers run atexit too: only the master that created the dir removes it.
        if os.getpid() == _owner:
            shutil.rmtree(_created, ignore_errors=True)

    # Removed when the master exits, even if the model fails to load.
    atexit.register(_remove_prom_dir)
else:
    # Files from a previous run would be summed into this run's counters.
    shutil.rmtree(_prom_dir, ignore_errors=True)
    os.makedirs(_prom_dir, exist_ok=True)

bind = os.environ.get("GUNICORN_BIND") or f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
preload_app = os.environ.get("GUNICORN_PRELOAD", "1") not in {"0", "false", "no"}
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None  # "-" for stdout; off by default (speed)
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Containers often have a small /tmp on overlayfs; /dev/shm keeps worker heartbeats off disk.
# gunicorn >= 25 opens a control socket under $HOME by default; two instances on one host
# (blue/green deploys, tests) would fight over it, and the image's user has no writable home.
control_socket_disable = True
_SHM = "/dev/shm"  # noqa: S108 - gunicorn's documented heartbeat location, not a temp file
worker_tmp_dir = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK) else None


def on_starting(server: Any) -> None:
    server.log.info("prometheus multiprocess dir: %s", _prom_dir)


def child_exit(server: Any, worker: Any) -> None:
    # Drop the dead worker's live gauges; its counters/histograms stay summed.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _fail_fast_on_model_error() -> None:
    """Print ModelLoadError as one clear line instead of a traceback, and exit non-zero."""
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if exc_type.__name__ == "ModelLoadError":
            print(f"FATAL: {exc}", file=sys.stderr, flush=True)
            return
        previous(exc_type, exc, tb)

    sys.excepthook = hook


_fail_fast_on_model_error()
