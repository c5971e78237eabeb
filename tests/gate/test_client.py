"""The http gate's client against a real HTTP server on loopback: batches, the rate limit, timeouts,
and what each kind of bad answer is told (the row, the response)."""

# ruff: noqa: E501  (the exact messages read best unbroken)

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.gate.client import Client, RateLimit, ServiceError
from orchestrator.gate.golden import GoldenSet, read_golden
from orchestrator.gate.protocol import Shape
from orchestrator.gate.spec import RequestSpec, ResponseSpec


class Service:
    """Answers POST /predict with ``self.answer(body)`` -> (status, text); records every body."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.times: list[float] = []
        self.answer = lambda body: (200, json.dumps({"predictions": [r["x"] * 2 for r in body["instances"]]}))
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                service.bodies.append(body)
                service.times.append(time.monotonic())
                status, text = service.answer(body)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def service() -> Iterator[Service]:
    s = Service()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def golden(tmp_path: Path) -> GoldenSet:
    (tmp_path / "g.csv").write_text("x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(5)))
    return read_golden(tmp_path / "g.csv", "y")


def client(url: str, **request: Any) -> Client:
    return Client(url, Shape(RequestSpec(preset="instances", **request), ResponseSpec()))


def test_batches_at_the_rate_limit(service: Service, golden: GoldenSet) -> None:
    answers = client(service.url, batch_size=2, rate_limit=20).query(golden)
    assert answers.predictions == [0, 2, 4, 6, 8] and len(answers.latencies_ms) == 3
    assert service.bodies == [
        {"instances": [{"x": 0}, {"x": 1}]},
        {"instances": [{"x": 2}, {"x": 3}]},
        {"instances": [{"x": 4}]},
    ]
    # 20 requests per second: 3 requests span at least 2 intervals of 50 ms (less arrival jitter)
    assert service.times[-1] - service.times[0] >= 0.08, service.times


def test_rate_limit_waits_and_stops_when_told() -> None:
    waits: list[float] = []
    limit = RateLimit(10, lambda s: waits.append(s) or False)
    for _ in range(3):
        limit.wait()
    # a schedule, not a pause after each call: the sleeps did not sleep, so the third call waits longer
    assert [round(w, 2) for w in waits] == [0.1, 0.2]
    stopping = RateLimit(10, lambda s: True)
    stopping.wait()
    with pytest.raises(InterruptedError):
        stopping.wait()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            (500, "Traceback: KeyError 'x'"),
            "rows 0-1 (g.csv lines 2-3): HTTP 500; the response: Traceback: KeyError 'x'",
        ),
        (
            (200, "<html>oops</html>"),
            "rows 0-1 (g.csv lines 2-3): the answer is not JSON; the response: <html>oops</html>",
        ),
        (
            (200, '{"error": "no model"}'),
            'rows 0-1 (g.csv lines 2-3): nothing at /predictions (no \'predictions\' in an object with keys error); the response: {"error": "no model"}',
        ),
        (
            (200, '{"predictions": [1]}'),
            'rows 0-1 (g.csv lines 2-3): expected 2 prediction(s) at /predictions, got 1; the response: {"predictions": [1]}',
        ),
        (
            (200, '{"predictions": [1, "high"]}'),
            'row 1 (g.csv line 3): prediction 1 at /predictions: \'high\' is not a number; the response: {"predictions": [1, "high"]}',
        ),
    ],
)
def test_bad_answers_name_the_rows_and_show_the_response(
    service: Service, golden: GoldenSet, answer: tuple, message: str
) -> None:
    service.answer = lambda body: answer
    with pytest.raises(ServiceError) as exc:
        client(service.url, batch_size=2, rate_limit=1000).query(golden)
    assert str(exc.value) == f"POST {service.url}/predict for {message}"


def test_timeout_and_refused_connection(service: Service, golden: GoldenSet) -> None:
    service.answer = lambda body: (time.sleep(1.0), (200, "{}"))[1]
    with pytest.raises(ServiceError) as exc:
        client(service.url, timeout=0.2, rate_limit=1000).query(golden)
    assert (
        str(exc.value) == f"POST {service.url}/predict: no answer within 0.2 s (rows 0-4 (g.csv lines 2-6))"
    )
    service.server.shutdown()
    service.server.server_close()
    with pytest.raises(
        ServiceError, match=rf"^POST {service.url}/predict: cannot connect \(ConnectionError: "
    ):
        client(service.url, rate_limit=1000).query(golden)
