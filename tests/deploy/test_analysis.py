"""The analysis as pure functions: counter deltas, the ring's timings, p99 and every rule, exact."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.deploy import analysis as an
from orchestrator.deploy.haproxy import ServerStat, show_timings
from orchestrator.pipeline.strategy import AnalysisSpec


def _stat(name: str, stot: int, e5: int) -> ServerStat:
    return ServerStat(name, "UP", 50, 0, stot, stot - e5, e5, 3, "L7OK", "", "10.0.0.2:5000")


def test_show_timings_command() -> None:
    assert show_timings() == "show events timing"


def test_counter_delta_sums_servers_and_survives_new_and_reset_counters() -> None:
    before = {"old": _stat("old", 1000, 4), "new": _stat("new", 10, 1)}
    after = {"old": _stat("old", 1190, 5), "new": _stat("new", 30, 3), "newer": _stat("newer", 7, 0)}
    assert an.counter_delta(before, after, ["old"]) == (190, 1)
    assert an.counter_delta(before, after, ["new"]) == (20, 2)
    assert an.counter_delta(before, after, ["newer"]) == (7, 0)  # not there before: from 0
    assert an.counter_delta(before, after, ["old", "new"]) == (210, 3)
    assert an.counter_delta(before, after, ["gone"]) == (0, 0)
    restarted = {"old": _stat("old", 40, 0)}
    assert an.counter_delta(before, restarted, ["old"]) == (40, 0)  # the edge restarted


RING = """\
101 hp-b1 3 200
102 hp-b2 12 500
103 hp-b1 -1 503
garbage line
104 hp-b2 9 200
"""


def test_parse_timings_and_since() -> None:
    ts = an.parse_timings(RING)
    assert ts == [
        an.Timing(101, "hp-b1", 3, 200),
        an.Timing(102, "hp-b2", 12, 500),
        an.Timing(103, "hp-b1", -1, 503),
        an.Timing(104, "hp-b2", 9, 200),
    ]
    assert an.last_seq(ts) == 104
    assert an.last_seq([]) == -1
    assert [t.seq for t in an.since(ts, 102)] == [103, 104]
    assert an.since(ts, 104) == []
    assert len(an.since(ts, 5000)) == 4  # the counter restarted with a new edge process
    assert an.times_of(ts, ["hp-b1"]) == [3]  # -1: no response, no time
    assert an.times_of(ts, ["hp-b2"]) == [12, 9]


@pytest.mark.parametrize(
    ("values", "p99"),
    [
        ([], None),
        ([7], 7.0),
        (list(range(1, 101)), 99.0),
        (list(range(1, 201)), 198.0),
        ([1] * 98 + [50, 90], 50.0),
        ([5, 1, 3], 5.0),
    ],
)
def test_p99_nearest_rank(values: list[int], p99: float | None) -> None:
    assert an.p99(values) == p99


def test_window() -> None:
    w = an.window(200, 3, [4, 5, 6])
    assert (w.requests, w.errors, w.p99_ms, w.timed, w.error_rate) == (200, 3, 6.0, 3, 0.015)
    assert w.as_dict() == {"requests": 200, "errors": 3, "p99_ms": 6.0, "timed": 3, "error_rate": 0.015}
    assert an.Window().error_rate == 0.0


STABLE = an.Window(requests=900, errors=9, p99_ms=20.0, timed=900)


def _spec(**kw: Any) -> AnalysisSpec:
    return AnalysisSpec(**kw)


@pytest.mark.parametrize(
    ("spec", "cand", "status", "reasons"),
    [
        (_spec(max_error_rate=0.02), an.Window(100, 2, 21.0), "pass", []),
        (
            _spec(max_error_rate=0.02),
            an.Window(100, 10, 21.0),
            "fail",
            ["error rate 10.00% (10/100) > max_error_rate 2.00%"],
        ),
        (_spec(max_error_rate_vs_stable=0.01), an.Window(100, 2, 20.0), "pass", []),  # 2% vs 1%: +1.00%
        (
            _spec(max_error_rate_vs_stable=0.01),
            an.Window(100, 3, 20.0),
            "fail",
            ["error rate 3.00% vs stable 1.00%: +2.00% > max_error_rate_vs_stable 1.00%"],
        ),
        (_spec(max_p99_ms=50), an.Window(100, 0, 50.0), "pass", []),
        (_spec(max_p99_ms=50), an.Window(100, 0, 51.0), "fail", ["p99 51 ms > max_p99_ms 50"]),
        (
            _spec(max_p99_ms=50),
            an.Window(100, 0, None),
            "insufficient",
            ["no response times of the candidate (max_p99_ms)"],
        ),
        (_spec(max_p99_ratio_vs_stable=2), an.Window(100, 0, 40.0), "pass", []),
        (
            _spec(max_p99_ratio_vs_stable=2),
            an.Window(100, 0, 61.0),
            "fail",
            ["p99 61 ms vs stable 20 ms: x3.05 > max_p99_ratio_vs_stable 2"],
        ),
        (
            _spec(max_error_rate=0.5, min_requests=20),
            an.Window(19, 19, 1.0),
            "insufficient",
            ["candidate had 19 requests, min_requests is 20"],
        ),
        (
            _spec(max_error_rate=0.02, max_p99_ms=10),
            an.Window(50, 5, 30.0),
            "fail",
            ["error rate 10.00% (5/50) > max_error_rate 2.00%", "p99 30 ms > max_p99_ms 10"],
        ),
    ],
)
def test_rules(spec: AnalysisSpec, cand: an.Window, status: str, reasons: list[str]) -> None:
    assert an.judge(spec, STABLE, cand) == an.Verdict(status, reasons)


def test_ratio_against_a_zero_ms_stable_counts_it_as_one_ms() -> None:
    spec = _spec(max_p99_ratio_vs_stable=3)
    fast = an.Window(100, 0, 0.0)
    assert an.judge(spec, fast, an.Window(100, 0, 3.0)).status == "pass"
    assert an.judge(spec, fast, an.Window(100, 0, 4.0)).reasons == [
        "p99 4 ms vs stable 0 ms: x4.00 > max_p99_ratio_vs_stable 3"
    ]


def test_baseline_is_named_in_a_watch() -> None:
    v = an.judge(
        _spec(max_error_rate_vs_stable=0.0), an.Window(500, 0, 5.0), an.Window(100, 1, 5.0), "baseline"
    )
    assert v.reasons == ["error rate 1.00% vs baseline 0.00%: +1.00% > max_error_rate_vs_stable 0.00%"]
