"""The one loop that runs a worker's periodic work (janitor, notifications, schedules)."""

from __future__ import annotations

import threading
import time

from orchestrator.background import every
from orchestrator.errors import StoreUnavailable


def test_a_failing_pass_never_stops_the_loop_and_stop_ends_it() -> None:
    calls: list[int] = []
    third = threading.Event()

    def work() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise StoreUnavailable("Redis is unreachable")
        if len(calls) == 2:
            raise RuntimeError("a bug in one pass")
        third.set()

    stop = every(0.01, work, "test")
    assert third.wait(5), calls  # passes 1 and 2 raised; the loop went on
    stop.set()
    time.sleep(0.05)
    settled = len(calls)
    time.sleep(0.1)
    assert len(calls) == settled  # no pass after stop
    assert not [t for t in threading.enumerate() if t.name == "test" and t.is_alive()]
