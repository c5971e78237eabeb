"""Periodic work in a worker process (janitor, notification dispatcher, scheduler): one loop for all."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from orchestrator.errors import StoreUnavailable

log = logging.getLogger(__name__)


def every(interval: float, work: Callable[[], object], name: str) -> threading.Event:
    """Run ``work`` every ``interval`` seconds in a daemon thread until the returned event is set.

    A Redis outage skips a pass quietly (the next pass retries); any other error is logged with its
    traceback and the loop goes on: housekeeping never takes the worker down.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                work()
            except StoreUnavailable:
                continue
            except Exception:
                log.exception("%s pass failed", name)

    threading.Thread(target=loop, name=name, daemon=True).start()
    return stop
