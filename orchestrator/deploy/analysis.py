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


# -- the service's own Prometheus histogram ---------------------------------------------------------------


def parse_histogram(text: str, name: str) -> dict[float, float]:
    """A ``/metrics`` answer (HTTP headers and all) → {upper bound (s): cumulative count} of histogram
    ``name``, summed over its label sets; {} if it is not there."""
    from prometheus_client.parser import text_string_to_metric_families

    _, sep, body = text.partition("\r\n\r\n")
    body = body if sep else text
    out: dict[float, float] = {}
    try:
        families = list(text_string_to_metric_families(body))
    except ValueError:
        return {}
    base = name.removesuffix("_bucket")
    for fam in families:
        if fam.name != base:
            continue
        for sample in fam.samples:
            if sample.name == base + "_bucket" and "le" in sample.labels:
                le = float(sample.labels["le"])
                out[le] = out.get(le, 0.0) + float(sample.value)
    return out


def histogram_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """The interval's buckets (a counter reset, e.g. a restart, counts from 0)."""
    if any(after.get(le, 0.0) < v for le, v in before.items()):
        return dict(after)
    return {le: v - before.get(le, 0.0) for le, v in after.items()}


def histogram_p99(buckets: Mapping[float, float]) -> float | None:
    """The 99th percentile in ms, interpolated within its bucket as Prometheus' histogram_quantile
    does (the +Inf bucket: the highest finite bound); None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = 0.99 * total
    prev_le, prev_count = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return round(prev_le * 1000, 3)
            inside = count - prev_count
            frac = (rank - prev_count) / inside if inside > 0 else 1.0
            return round((prev_le + (le - prev_le) * frac) * 1000, 3)
        prev_le, prev_count = le, count
    return round(prev_le * 1000, 3)


def add_buckets(parts: Iterable[Mapping[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for part in parts:
        for le, v in part.items():
            out[le] = out.get(le, 0.0) + v
    return out


# -- shadow traffic: the same live requests answered by stable and candidate -------------------------


@dataclass(frozen=True)
class ShadowPair:
    """One mirrored request and both answers, as the edge's shadow.lua recorded them."""

    stable_status: int  # 0: no answer
    candidate_status: int
    request: str
    stable: str
    candidate: str


_UNESCAPE = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in _UNESCAPE:
            out.append(_UNESCAPE[text[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_shadow_dump(text: str) -> tuple[dict[str, int], list[ShadowPair]]:
    """``mlship shadow dump`` → (its counters: sampled, recorded, dropped, large; the pairs)."""
    counts: dict[str, int] = {}
    pairs = []
    for line in text.splitlines():
        if line.startswith("# "):
            words = line[2:].split()
            counts = {k: int(v) for k, v in zip(words[::2], words[1::2], strict=False) if v.isdigit()}
            continue
        parts = line.split("\t")
        if len(parts) != 5 or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        pairs.append(ShadowPair(int(parts[0]), int(parts[1]), *(_unescape(p) for p in parts[2:])))
    return counts, pairs


def _predictions(body: str, pointer: str) -> list[Any] | None:
    import json

    from orchestrator.gate.protocol import resolve

    try:
        value = resolve(json.loads(body), pointer)
    except Exception:  # not JSON, or nothing at the pointer: this answer cannot be compared
        return None
    return list(value) if isinstance(value, list) else [value]


def _diff(s: Any, c: Any) -> float | None:
    """|candidate - stable| for numbers; None for labels (compared for equality only)."""
    if isinstance(s, (int, float)) and isinstance(c, (int, float)) and not isinstance(s, bool):
        return abs(float(c) - float(s))
    return None


def shadow_report(
    pairs: Iterable[ShadowPair], pointer: str, tolerance: float, show: int = 5
) -> dict[str, Any]:
    """The distribution of prediction differences over the rows of every pair both sides answered."""
    rows = changed = failed = 0
    diffs: list[float] = []
    largest: list[tuple[float, dict[str, Any]]] = []
    n = 0
    for p in pairs:
        n += 1
        s = _predictions(p.stable, pointer) if 200 <= p.stable_status < 300 else None
        c = _predictions(p.candidate, pointer) if 200 <= p.candidate_status < 300 else None
        if s is None:
            failed += 1  # the stable side did not answer: nothing to compare with
            continue
        if c is None or len(s) != len(c):
            # The candidate failed where the stable one answered: every row of it changed.
            rows, changed = rows + len(s), changed + len(s)
            largest.append(
                (float("inf"), {"request": p.request[:200], "stable": s, "candidate": p.candidate[:200]})
            )
            continue
        for sv, cv in zip(s, c, strict=True):
            rows += 1
            d = _diff(sv, cv)
            moved = (d > tolerance) if d is not None else sv != cv
            if d is not None:
                diffs.append(d)
            if moved:
                changed += 1
                largest.append(
                    (d if d is not None else 1.0, {"request": p.request[:200], "stable": sv, "candidate": cv})
                )
    largest.sort(key=lambda x: -x[0])
    return {
        "requests": n,
        "failed": failed,  # the stable side answered no 2xx, or no predictions at the pointer
        "rows": rows,
        "changed": changed,
        "share_changed": round(changed / rows, 4) if rows else 0.0,
        "mean_abs_diff": round(sum(diffs) / len(diffs), 6) if diffs else 0.0,
        "max_abs_diff": round(max(diffs), 6) if diffs else 0.0,
        "largest": [x for _, x in largest[:show]],
    }


def judge_shadow(spec: Any, report: dict[str, Any]) -> Verdict:
    """``max_mean_abs_diff``, ``max_share_changed`` over the rows compared so far (``ShadowAnalysisSpec``)."""
    compared = report["requests"] - report["failed"]
    if compared < spec.min_requests:
        return Verdict(INSUFFICIENT, [f"{compared} requests compared, min_requests is {spec.min_requests}"])
    fails = []
    if spec.max_share_changed is not None and report["share_changed"] > spec.max_share_changed:
        fails.append(
            f"{_pct(report['share_changed'])} of rows changed ({report['changed']}/{report['rows']}) > "
            f"max_share_changed {_pct(spec.max_share_changed)}"
        )
    if spec.max_mean_abs_diff is not None and report["mean_abs_diff"] > spec.max_mean_abs_diff:
        fails.append(
            f"mean |diff| {report['mean_abs_diff']:g} > max_mean_abs_diff {spec.max_mean_abs_diff:g}"
        )
    return Verdict(FAIL, fails) if fails else Verdict(PASS)
