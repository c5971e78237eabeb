"""The edge TCP switch, with real sockets: two upstreams, a switch, an in-flight connection."""

from __future__ import annotations

import http.server
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import inference
from inference import edge

PROJECT = Path(inference.__file__).resolve().parent.parent


class _Named(socketserver.ThreadingTCPServer):
    """Greets with its name, then answers each line with ``name:line``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str):
        self.name = name

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(f"{name}\n".encode())
                for line in self.rfile:
                    self.wfile.write(f"{name}:{line.decode().strip()}\n".encode())

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference.edge", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def upstreams() -> Iterator[tuple[_Named, _Named]]:
    a, b = _Named("A"), _Named("B")
    yield a, b
    for s in (a, b):
        s.shutdown()
        s.server_close()


@pytest.fixture
def edge_proxy(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, state = _free_port(), tmp_path / "state" / "upstream"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference.edge",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--state",
            str(state),
        ],
        cwd=PROJECT,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"edge did not start: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.05)
    yield port, state
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    proc.stderr.close()  # type: ignore[union-attr]


def _connect(port: int) -> tuple[socket.socket, object]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s, s.makefile("rwb")


def _greeting(port: int) -> bytes:
    s, f = _connect(port)
    with s:
        return f.readline()  # type: ignore[attr-defined, no-any-return]


def test_switch_sends_new_connections_to_new_upstream_and_keeps_old_ones(
    edge_proxy: tuple[int, Path], upstreams: tuple[_Named, _Named]
) -> None:
    port, state = edge_proxy
    a, b = upstreams
    assert _greeting(port) == b""  # no state file yet: refused (closed)

    assert _cli("set", "--state", str(state), a.hostport).returncode == 0
    assert _greeting(port) == b"A\n"
    inflight, f = _connect(port)
    assert f.readline() == b"A\n"  # type: ignore[attr-defined]

    assert _cli("set", "--state", str(state), b.hostport).returncode == 0
    assert _greeting(port) == b"B\n"
    f.write(b"still-there\n")  # type: ignore[attr-defined]
    f.flush()  # type: ignore[attr-defined]
    assert f.readline() == b"A:still-there\n"  # type: ignore[attr-defined]
    inflight.close()

    state.write_text("")
    assert _greeting(port) == b""  # an empty state file means no upstream


def test_unreachable_upstream_closes_the_client(edge_proxy: tuple[int, Path]) -> None:
    port, state = edge_proxy
    edge.set_upstream(state, f"127.0.0.1:{_free_port()}")
    assert _greeting(port) == b""


def test_set_writes_atomically_and_rejects_garbage(tmp_path: Path) -> None:
    state = tmp_path / "upstream"
    assert _cli("set", "--state", str(state), "web-blue:5000").returncode == 0
    assert state.read_text() == "web-blue:5000\n"
    bad = _cli("set", "--state", str(state), "no-port")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
    assert state.read_text() == "web-blue:5000\n"
    assert os.listdir(tmp_path) == ["upstream"]  # no temp files left behind


@pytest.mark.parametrize(
    "text, expected",
    [
        ("10.0.0.5:5000", ("10.0.0.5", 5000)),
        ("[::1]:80", ("::1", 80)),
        (" host:1\n", ("host", 1)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert edge.parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["host", ":80", "host:0", "host:70000", "host:x"])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        edge.parse_hostport(text)


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_probe_exit_status_and_reason(http_server: str) -> None:
    assert _cli("probe", http_server + "/health").returncode == 0
    r = _cli("probe", http_server + "/ready")
    assert r.returncode == 1 and "answered 503, expected 200" in r.stderr
    assert _cli("probe", http_server + "/ready", "--status", "503").returncode == 0
    r = _cli("probe", f"http://127.0.0.1:{_free_port()}/health", "--timeout", "2")
    assert r.returncode == 1 and "failed" in r.stderr and len(r.stderr.strip().splitlines()) == 1
