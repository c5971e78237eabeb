"""Real receivers for notifications: HTTP servers (Slack-style and signed generic webhooks) and an
SMTP server (aiosmtpd), each on a free loopback port, started and stopped per test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrator.notify import payloads
from orchestrator.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool | None = None  # generic webhook: did the HMAC check pass in the receiver


@dataclass
class Receiver:
    """An HTTP endpoint that records every POST; ``secret`` set: it verifies the signature like a
    real receiver would (and answers 401 when it does not match); ``status`` is what it answers."""

    secret: bytes | None = None
    status: int = 200
    requests: list[Received] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook/T0123/B0456/s3cr3t-path"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = dict(self.headers.items())
                rec = Received(self.path, headers, body)
                if receiver.secret is not None:
                    rec.verified = payloads.verify(receiver.secret, headers, body, time.time())
                receiver.requests.append(rec)
                code = 401 if rec.verified is False else receiver.status
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        r = Receiver(**kw).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@dataclass
class MailBox:
    """The aiosmtpd handler: keeps every message; refuses recipients in ``refuse``."""

    refuse: set[str] = field(default_factory=set)
    refusal: str = "550 5.1.1 no such mailbox here"
    messages: list[Message] = field(default_factory=list)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return self.refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    port: int
    box: MailBox


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        from tests.conftest import unavailable

        unavailable("aiosmtpd is not installed (pip install -e '.[dev]')")
    box = MailBox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield SmtpServer(port, box)
    controller.stop()


@pytest.fixture
def store(redis_url: str) -> Store:
    return Store.from_url(redis_url)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
