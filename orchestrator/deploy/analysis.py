"""A progressive deploy's analysis, as pure functions over one interval's numbers.

Where the numbers come from (both read from the edge over its runtime API, nothing from the app):

- **requests and 5xx**: the deltas of each server's ``stot`` and ``hrsp_5xx`` (``show stat``) between
  the start and the end of the interval;
- **p99**: HAProxy's ``rtime`` is an average over the last 1024 requests, not a percentile, so the edge
  also logs every request as ``<request counter> <server> <Tr ms> <status>`` into an in-memory ring
  (``ring timing`` in the edge config, read with ``show events timing``); the p99 is the nearest-rank
  99th percentile of the ``Tr`` (time from sending the request to the server until its response
  headers) of the interval's requests of that side. The ring keeps the newest ~8000 requests: at more
  requests per interval the p99 is over the newest of them.

``judge`` applies the rules of an ``analysis:`` (orchestrator/pipeline/strategy.py) to the stable and
the candidate side of one interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.deploy.haproxy import ServerStat
from orchestrator.pipeline.strategy import AnalysisSpec

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient"


@dataclass(frozen=True)
class Timing:
    """One request as the edge logged it into its ring."""

    seq: int  # HAProxy's request counter (%rt)
    server: str
    tr_ms: int  # -1: no response from the server
    status: int


@dataclass(frozen=True)
class Window:
    """One side's numbers over one interval."""

    requests: int = 0
    errors: int = 0  # 5xx answers
    p99_ms: float | None = None
    timed: int = 0  # requests with a response time in the ring

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": round(self.error_rate, 4)}


@dataclass(frozen=True)
class Verdict:
    status: str  # pass | fail | insufficient
    reasons: list[str] = field(default_factory=list)


def parse_timings(text: str) -> list[Timing]:
    """``show events timing`` → the requests it lists (other lines, e.g. a header, are skipped)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        seq, server, tr, status = parts
        try:
            out.append(Timing(int(seq), server, int(tr), int(status)))
        except ValueError:
            continue
    return out


def last_seq(timings: Iterable[Timing]) -> int:
    return max((t.seq for t in timings), default=-1)


def since(timings: Iterable[Timing], seq: int) -> list[Timing]:
    """The requests logged after ``seq`` (the counter restarts with a new edge process: all of them)."""
    ts = list(timings)
    if ts and last_seq(ts) < seq:
        return ts
    return [t for t in ts if t.seq > seq]


def p99(values: Iterable[float]) -> float | None:
    """Nearest-rank 99th percentile; None without values."""
    xs = sorted(values)
    if not xs:
        return None
    return float(xs[max(0, math.ceil(0.99 * len(xs)) - 1)])


def counter_delta(
    before: Mapping[str, ServerStat], after: Mapping[str, ServerStat], names: Iterable[str]
) -> tuple[int, int]:
    """(requests, 5xx) of ``names`` between two ``show stat`` reads. A server new since ``before``
    counts from 0; a counter that went down (the edge restarted) counts from 0 too."""
    requests = errors = 0
    for n in names:
        a = after.get(n)
        if a is None:
            continue
        b = before.get(n)
        stot0, err0 = (b.stot, b.hrsp_5xx) if b is not None else (0, 0)
        requests += a.stot - stot0 if a.stot >= stot0 else a.stot
        errors += a.hrsp_5xx - err0 if a.hrsp_5xx >= err0 else a.hrsp_5xx
    return requests, errors


def times_of(timings: Iterable[Timing], names: Iterable[str]) -> list[int]:
    """The response times (ms) of the requests that ``names`` answered."""
    wanted = set(names)
    return [t.tr_ms for t in timings if t.server in wanted and t.tr_ms >= 0]


def window(requests: int, errors: int, times: Iterable[int]) -> Window:
    """One side's Window (summed over hosts): its counters and the p99 of its timed requests."""
    xs = list(times)
    return Window(requests, errors, p99(xs), len(xs))


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def judge(spec: AnalysisSpec, stable: Window, candidate: Window, baseline: str = "stable") -> Verdict:
    """The rules of ``spec`` on one interval. ``baseline`` names the stable side in the reasons."""
    if candidate.requests < spec.min_requests:
        return Verdict(
            INSUFFICIENT,
            [f"candidate had {candidate.requests} requests, min_requests is {spec.min_requests}"],
        )
    fails: list[str] = []
    missing: list[str] = []
    if spec.max_error_rate is not None and candidate.error_rate > spec.max_error_rate:
        fails.append(
            f"error rate {_pct(candidate.error_rate)} ({candidate.errors}/{candidate.requests}) > "
            f"max_error_rate {_pct(spec.max_error_rate)}"
        )
    if spec.max_error_rate_vs_stable is not None:
        diff = candidate.error_rate - stable.error_rate
        if diff > spec.max_error_rate_vs_stable:
            fails.append(
                f"error rate {_pct(candidate.error_rate)} vs {baseline} {_pct(stable.error_rate)}: "
                f"+{_pct(diff)} > max_error_rate_vs_stable {_pct(spec.max_error_rate_vs_stable)}"
            )
    if spec.max_p99_ms is not None:
        if candidate.p99_ms is None:
            missing.append("no response times of the candidate (max_p99_ms)")
        elif candidate.p99_ms > spec.max_p99_ms:
            fails.append(f"p99 {candidate.p99_ms:g} ms > max_p99_ms {spec.max_p99_ms:g}")
    if spec.max_p99_ratio_vs_stable is not None:
        fails += _p99_ratio(spec.max_p99_ratio_vs_stable, stable, candidate, baseline, missing)
    if fails:
        return Verdict(FAIL, fails)
    if missing:
        return Verdict(INSUFFICIENT, missing)
    return Verdict(PASS)


def _p99_ratio(limit: float, stable: Window, cand: Window, baseline: str, missing: list[str]) -> list[str]:
    if cand.p99_ms is None or stable.p99_ms is None:
        missing.append(f"no response times of the {'candidate' if cand.p99_ms is None else baseline}")
        return []
    # The edge logs whole milliseconds: a fast stable side at 0 ms is compared as 1 ms.
    ratio = cand.p99_ms / max(stable.p99_ms, 1.0)
    if ratio > limit:
        return [
            f"p99 {cand.p99_ms:g} ms vs {baseline} {stable.p99_ms:g} ms: x{ratio:.2f} > "
            f"max_p99_ratio_vs_stable {limit:g}"
        ]
    return []
