"""The http gate's client: send the golden rows to one environment's base URL, collect the answers.

Only a base URL is needed per environment (the step derives it from pipeline.yaml). Requests go in
the shape's batches, one at a time, no faster than ``request.rate_limit`` per second, each with
``request.timeout``; a failure names the golden row and shows the start of the response.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from orchestrator.gate.golden import GoldenSet
from orchestrator.gate.protocol import AnswerError, Shape, excerpt


class ServiceError(Exception):
    """The service could not be reached, answered an error, or answered something unreadable."""


@dataclass
class Answers:
    predictions: list[Any] = field(default_factory=list)
    probabilities: list[list[float]] | None = None
    latencies_ms: list[float] = field(default_factory=list)


class RateLimit:
    """At most ``rate`` calls per second: ``wait()`` before each one. ``sleep`` returns True to stop."""

    def __init__(self, rate: float, sleep: Callable[[float], bool]) -> None:
        self.interval, self.sleep, self.next_at = 1.0 / rate, sleep, 0.0

    def wait(self) -> None:
        delay = self.next_at - time.monotonic()
        if delay > 0 and self.sleep(delay):
            raise InterruptedError("stopped")
        self.next_at = max(self.next_at, time.monotonic()) + self.interval


def _stop_never(seconds: float) -> bool:
    time.sleep(seconds)
    return False


@dataclass
class Client:
    """Queries one environment at ``base_url`` with ``shape``."""

    base_url: str
    shape: Shape
    sleep: Callable[[float], bool] = _stop_never  # e.g. a cancel token's wait: True = stop now
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.shape.path

    def query(self, golden: GoldenSet) -> Answers:
        out = Answers(probabilities=[] if self.shape.response.probabilities is not None else None)
        limit = RateLimit(self.shape.request.rate_limit, self.sleep)
        size = self.shape.batch_size
        with self.session:
            for start in range(0, len(golden.rows), size):
                rows = golden.rows[start : start + size]
                limit.wait()
                answer, ms = self._post(self.shape.body(rows, golden.features), golden, start, len(rows))
                out.latencies_ms.append(ms)
                try:
                    out.predictions += self.shape.predictions(answer, len(rows))
                    proba = self.shape.probabilities(answer, len(rows))
                except AnswerError as exc:
                    at, n = (start, len(rows)) if exc.index is None else (start + exc.index, 1)
                    raise ServiceError(self._bad(golden, at, n, str(exc), json.dumps(answer))) from None
                if out.probabilities is not None and proba is not None:
                    out.probabilities += proba
        return out

    def _post(self, body: Any, golden: GoldenSet, start: int, n: int) -> tuple[Any, float]:
        req = self.shape.request
        t0 = time.perf_counter()
        try:
            resp = self.session.request(
                req.method, self.url, json=body, headers=req.headers, timeout=req.timeout
            )
        except requests.Timeout:
            raise ServiceError(
                f"{req.method} {self.url}: no answer within {req.timeout:g} s ({_rows(golden, start, n)})"
            ) from None
        except requests.RequestException as exc:
            raise ServiceError(
                f"{req.method} {self.url}: cannot connect ({type(exc).__name__}: {_short(exc)})"
            ) from None
        ms = (time.perf_counter() - t0) * 1000
        if resp.status_code >= 400:
            raise ServiceError(self._bad(golden, start, n, f"HTTP {resp.status_code}", resp.text))
        try:
            return resp.json(), ms
        except ValueError:
            raise ServiceError(self._bad(golden, start, n, "the answer is not JSON", resp.text)) from None

    def _bad(self, golden: GoldenSet, start: int, n: int, problem: str, body: str) -> str:
        return (
            f"{self.shape.request.method} {self.url} for {_rows(golden, start, n)}: {problem}; "
            f"the response: {excerpt(body)}"
        )


def _rows(golden: GoldenSet, start: int, n: int) -> str:
    if n == 1:
        return golden.where(start)
    end = start + n - 1
    return f"rows {start}-{end} ({golden.name} lines {golden.lines[start]}-{golden.lines[end]})"


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + " …"
