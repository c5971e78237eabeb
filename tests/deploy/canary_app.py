"""A small test service whose faults are set by env vars, built once and pushed as builds 1 and 2
(shared by tests/deploy/test_canary.py and bench/canary_bench.py).

``GET /work`` answers ``ok``; ``ERROR_EVERY=N`` makes every N-th one a 500 (exactly 1/N of them, so an
interval's error rate is known), ``DELAY_MS`` delays each; once the file ``/tmp/fail`` exists (a test
creates it with ``docker exec``) every 5th one is a 500. ``GET /metrics`` is a Prometheus histogram
``app_request_seconds`` of the ``/work`` answers' time (``REPORT_MS`` makes it record that instead of the
time measured: a histogram whose content a test knows, whatever the machine's load). ``POST /predict`` answers
``{"predictions": [sum(row) for row in rows]}``, except that with ``CHANGED_DIGITS=k`` the prediction
of each row whose first value mod 10 is below k (k/10 of rows whose first values cycle 0..9) is
shifted by ``CHANGE_BY``. ``GET /ready`` is the health check (no fault).
Python's standard library only: no package install in the image.
"""

from __future__ import annotations

import io
import tarfile
from typing import Any

from tests.deploy.helpers import ExampleImages

APP = """\
import json, os, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR_EVERY = int(os.environ.get("ERROR_EVERY", "0"))
DELAY = float(os.environ.get("DELAY_MS", "0")) / 1000
CHANGED_DIGITS = int(os.environ.get("CHANGED_DIGITS", "0"))
CHANGE_BY = float(os.environ.get("CHANGE_BY", "1"))
REPORT = float(os.environ.get("REPORT_MS", "0")) / 1000
lock, count = threading.Lock(), [0]
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
hist = [0] * (len(BOUNDS) + 1)


def observe(seconds):
    with lock:
        for i, le in enumerate(BOUNDS):
            if seconds <= le:
                hist[i] += 1
                break
        else:
            hist[-1] += 1


def metrics():
    lines = ["# TYPE app_request_seconds histogram"]
    with lock:
        total = 0
        for le, n in zip(BOUNDS, hist):
            total += n
            lines.append(f'app_request_seconds_bucket{{le="{le}"}} {total}')
        lines.append(f'app_request_seconds_bucket{{le="+Inf"}} {total + hist[-1]}')
        lines.append(f"app_request_seconds_count {total + hist[-1]}")
    return "\\n".join(lines) + "\\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, ctype="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/ready":
            return self.answer(200, "ready\\n")
        if self.path == "/metrics":
            return self.answer(200, metrics())
        if self.path != "/work":
            return self.answer(404, "no such page\\n")
        t0 = time.monotonic()
        with lock:
            count[0] += 1
            n = count[0]
        if DELAY:
            time.sleep(DELAY)
        observe(REPORT or time.monotonic() - t0)
        if (ERROR_EVERY and n % ERROR_EVERY == 0) or (n % 5 == 0 and os.path.exists("/tmp/fail")):
            return self.answer(500, "injected failure\\n")
        return self.answer(200, "ok\\n")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        rows = json.loads(body)["rows"]
        preds = []
        for r in rows:
            p = float(sum(r))
            if int(r[0]) % 10 < CHANGED_DIGITS:
                p += CHANGE_BY
            preds.append(p)
        return self.answer(200, json.dumps({"predictions": preds}), "application/json")


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", 5000), Handler).serve_forever()
"""
DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
WORKDIR /app
COPY app.py .
CMD ["python3", "app.py"]
"""


def build_canary_images(client: Any, base_image: str, registry_addr: str) -> ExampleImages:
    """The app as build 1 and (a label layer on top) build 2, pushed; faults come from the env."""
    repository = f"{registry_addr}/canary-app"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in {"Dockerfile": DOCKERFILE, "app.py": APP}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(
        fileobj=buf, custom_context=True, buildargs={"BASE_IMAGE": base_image}, tag=f"{repository}:1", rm=True
    )
    df = f"FROM {repository}:1\nLABEL org.example.build=2\n"
    client.images.build(fileobj=io.BytesIO(df.encode()), tag=f"{repository}:2", rm=True)
    digests: dict[int, str] = {}
    for n in (1, 2):
        for line in client.api.push(repository, tag=str(n), stream=True, decode=True):
            if "error" in line:
                raise RuntimeError(line["error"])
            if (line.get("aux") or {}).get("Digest"):
                digests[n] = line["aux"]["Digest"]
    return ExampleImages(repository, {n: f"{repository}:{n}" for n in (1, 2)}, digests)
