"""The analysis as pure functions: counter deltas, the ring's timings, p99 and every rule, exact."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.deploy import analysis as an
from orchestrator.deploy.haproxy import ServerStat, show_timings
from orchestrator.errors import DeployError
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


def test_shadow_commands() -> None:
    from orchestrator.deploy import haproxy

    assert (
        haproxy.shadow_start(20, "/predict", "10.0.0.2:5000", "10.0.0.3:5000")
        == "mlship shadow start 20 /predict 10.0.0.2:5000 10.0.0.3:5000"
    )
    assert haproxy.shadow_stop() == "mlship shadow stop"
    assert haproxy.shadow_dump() == "mlship shadow dump"
    for bad in (("/p x", "10.0.0.2:1"), ("/p;show", "10.0.0.2:1"), ("p", "10.0.0.2:1"), ("/p", "host:1")):
        with pytest.raises(DeployError, match="shadow"):
            haproxy.shadow_start(20, bad[0], bad[1], "10.0.0.3:5000")
    with pytest.raises(DeployError, match=r"outside 1\.\.100"):
        haproxy.shadow_start(0, "/predict", "10.0.0.2:5000", "10.0.0.3:5000")


DUMP = (
    "# sampled 5 recorded 4 dropped 0 large 1\n"
    '200\t200\t{"rows": [[0, 1]]}\t{"predictions": [1.0]}\t{"predictions": [6.0]}\n'
    '200\t200\t{"rows": [[4, 1], [5, 1]]}\t{"predictions": [5.0, 6.0]}\t{"predictions": [5.0, 6.5]}\n'
    '200\t500\t{"rows": [[7, 1]]}\t{"predictions": [8.0]}\tinjected\\tfailure\\n\n'
    '503\t200\t{"rows": [[9, 1]]}\tdown\t{"predictions": [10.0]}\n'
)


def test_parse_shadow_dump() -> None:
    counts, pairs = an.parse_shadow_dump(DUMP)
    assert counts == {"sampled": 5, "recorded": 4, "dropped": 0, "large": 1}
    assert len(pairs) == 4
    assert pairs[2] == an.ShadowPair(
        200, 500, '{"rows": [[7, 1]]}', '{"predictions": [8.0]}', "injected\tfailure\n"
    )


def test_shadow_report_and_rules() -> None:
    from orchestrator.pipeline.strategy import ShadowAnalysisSpec

    _, pairs = an.parse_shadow_dump(DUMP)
    report = an.shadow_report(pairs, "/predictions", 1e-9)
    # Rows: 1 (diff 5), 2 (diffs 0 and 0.5), 1 from the candidate's 500 (changed); the stable 503 is skipped.
    assert {k: v for k, v in report.items() if k != "largest"} == {
        "requests": 4,
        "failed": 1,
        "rows": 4,
        "changed": 3,
        "share_changed": 0.75,
        "mean_abs_diff": round(5.5 / 3, 6),
        "max_abs_diff": 5.0,
    }
    assert report["largest"][0]["candidate"] == "injected\tfailure\n"  # a failed answer ranks first
    assert report["largest"][1] == {"request": '{"rows": [[0, 1]]}', "stable": 1.0, "candidate": 6.0}
    spec = ShadowAnalysisSpec(max_share_changed=0.5, max_mean_abs_diff=2.0, min_requests=3)
    assert an.judge_shadow(spec, report) == an.Verdict(
        "fail", ["75.00% of rows changed (3/4) > max_share_changed 50.00%"]
    )
    strict = ShadowAnalysisSpec(max_mean_abs_diff=1.0, min_requests=3)
    assert an.judge_shadow(strict, report).reasons == ["mean |diff| 1.83333 > max_mean_abs_diff 1"]
    assert an.judge_shadow(ShadowAnalysisSpec(max_share_changed=1.0, min_requests=4), report) == an.Verdict(
        "insufficient", ["3 requests compared, min_requests is 4"]
    )
    assert an.shadow_report(pairs, "/predictions", 1.0)["changed"] == 2  # 0.5 is within the tolerance


METRICS = (
    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
    "# HELP http_request_duration_seconds Time per request\n"
    "# TYPE http_request_duration_seconds histogram\n"
    'http_request_duration_seconds_bucket{path="/a",le="0.01"} 50\n'
    'http_request_duration_seconds_bucket{path="/a",le="0.1"} 90\n'
    'http_request_duration_seconds_bucket{path="/a",le="+Inf"} 100\n'
    'http_request_duration_seconds_bucket{path="/b",le="0.01"} 50\n'
    'http_request_duration_seconds_bucket{path="/b",le="0.1"} 100\n'
    'http_request_duration_seconds_bucket{path="/b",le="+Inf"} 100\n'
    'http_request_duration_seconds_sum{path="/a"} 4.0\n'
    'http_request_duration_seconds_count{path="/a"} 100\n'
)


def test_parse_histogram_sums_label_sets() -> None:
    assert an.parse_histogram(METRICS, "http_request_duration_seconds") == {
        0.01: 100.0,
        0.1: 190.0,
        float("inf"): 200.0,
    }
    assert an.parse_histogram(METRICS, "other_seconds") == {}
    assert an.parse_histogram("HTTP/1.0 404 Not Found\r\n\r\nnope {", "x") == {}


@pytest.mark.parametrize(
    ("buckets", "p99"),
    [
        ({}, None),
        ({0.01: 0.0, float("inf"): 0.0}, None),
        ({0.01: 100.0, 0.1: 200.0, float("inf"): 200.0}, 98.2),  # rank 198: 0.01 + 0.09 * 98/100
        ({0.01: 100.0, float("inf"): 200.0}, 10.0),  # in the +Inf bucket: the highest finite bound
        ({0.005: 99.0, 0.01: 100.0, float("inf"): 100.0}, 5.0),
    ],
)
def test_histogram_p99(buckets: dict[float, float], p99: float | None) -> None:
    assert an.histogram_p99(buckets) == p99


def test_histogram_delta_and_reset() -> None:
    before = {0.01: 10.0, float("inf"): 20.0}
    assert an.histogram_delta(before, {0.01: 15.0, float("inf"): 30.0}) == {0.01: 5.0, float("inf"): 10.0}
    assert an.histogram_delta(before, {0.01: 1.0, float("inf"): 2.0}) == {0.01: 1.0, float("inf"): 2.0}
    assert an.add_buckets([{0.01: 1.0}, {0.01: 2.0, 0.1: 3.0}]) == {0.01: 3.0, 0.1: 3.0}


def test_edge_fetch_argv() -> None:
    from orchestrator.deploy import commands as remote

    assert remote.edge_fetch("hp-edge", "10.0.0.3:5000") == [
        "docker",
        "exec",
        "--interactive",
        "hp-edge",
        "socat",
        "-t",
        "5",
        "stdio",
        "TCP:10.0.0.3:5000",
    ]
    assert remote.http_get("/metrics") == b"GET /metrics HTTP/1.0\r\nAccept: text/plain\r\n\r\n"
    with pytest.raises(DeployError):
        remote.edge_fetch("hp-edge", "10.0.0.3:5000,fork")
    with pytest.raises(DeployError):
        remote.http_get("/metrics HTTP/1.1\r\nX: y")
