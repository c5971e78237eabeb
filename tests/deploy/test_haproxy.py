"""The edge's HAProxy as data: runtime API commands as exact strings, show stat parsing, the config
(checked by the real ``haproxy -c``), and EdgeControl driving a real HAProxy through its admin socket."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.deploy import edge as edge_files
from orchestrator.deploy import haproxy
from orchestrator.deploy.edgectl import EdgeControl, servers_from
from orchestrator.devstack.services import free_port, port_open, wait_for
from orchestrator.errors import DeployError
from tests.conftest import unavailable
from tests.deploy.helpers import get

CHECK = haproxy.Check(path="/ready", status=200, interval_ms=500, rise=2, fall=3)
SRV = haproxy.Server("hp-b7", "172.18.0.5", 5000)


@pytest.mark.parametrize(
    "got,expected",
    [
        (
            haproxy.add_server(SRV, CHECK),
            [
                "add server app/hp-b7 172.18.0.5:5000 check inter 500 fastinter 500 rise 2 fall 3 weight 0",
                "enable health app/hp-b7",
                "enable server app/hp-b7",
            ],
        ),
        (haproxy.set_weight("hp-b7", 100), "set server app/hp-b7 weight 100"),
        (haproxy.set_weight("hp-b7", 0), "set server app/hp-b7 weight 0"),
        (haproxy.set_state("hp-b6", "drain"), "set server app/hp-b6 state drain"),
        (haproxy.set_state("hp-b6", "ready"), "set server app/hp-b6 state ready"),
        (
            haproxy.del_server("hp-b6"),
            [
                "set server app/hp-b6 state maint",
                "shutdown sessions server app/hp-b6",
                "del server app/hp-b6",
            ],
        ),
        (haproxy.show_stat(), "show stat -1 4 -1"),
        (haproxy.join(["a b", "c"]), b"a b; c\n"),
        (
            haproxy.server_line(haproxy.Server("hp-b6", "172.18.0.4", 5000, 100, "drain"), CHECK),
            "    server hp-b6 172.18.0.4:5000 check inter 500 fastinter 500 rise 2 fall 3 weight 0",
        ),
        (
            haproxy.server_line(haproxy.Server("hp-b6", "172.18.0.4", 5000, 100, "maint"), CHECK),
            "    server hp-b6 172.18.0.4:5000 check inter 500 fastinter 500 rise 2 fall 3 weight 100"
            " disabled",
        ),
    ],
)
def test_exact_commands(got: object, expected: object) -> None:
    assert got == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda: haproxy.set_weight("hp-b7", 257),
        lambda: haproxy.set_weight("hp-b7", -1),
        lambda: haproxy.set_state("hp-b7", "up"),
        lambda: haproxy.set_weight("a b", 1),
        lambda: haproxy.set_weight("x;shutdown", 1),
        lambda: haproxy.Server("hp-b7", "1.2.3.4; del", 5000),
        lambda: haproxy.Server("hp-b7", "1.2.3.4", 0),
        lambda: haproxy.join(["show stat; shutdown frontend public"]),
        lambda: haproxy.join(["show stat\nx"]),
    ],
)
def test_bad_values_are_refused(make: object) -> None:
    with pytest.raises(DeployError):
        make()  # type: ignore[operator]


def test_errors_in_replies() -> None:
    assert haproxy.errors_in("New server registered.\n\n\n\n") == []
    assert haproxy.errors_in("Server deleted.\n") == []
    assert haproxy.errors_in("No such server.\n\n") == ["No such server."]


# A real `show stat -1 4 -1` answer of HAProxy 2.6.12 (columns trimmed after check_desc's neighbours).
STAT = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,"
    "weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,"
    "rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,"
    "hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,"
    "lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,"
    "agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr\n"
    "app,hp-b6,0,0,2,5,,812,0,0,,0,,0,0,0,0,DRAIN,100,1,0,0,0,9,0,,1,3,1,,812,,2,0,,9,L7OK,200,1,0,800,0,0,"
    "12,0,,0,9,812,0,0,0,0,0,0,0,,,0,0,3,4,,,,Layer7 check passed,,2,3,4,,,,172.18.0.4:5000\n"
    "app,hp-b7,0,0,0,1,,3,0,0,,0,,0,0,0,0,UP,0,1,0,0,0,2,0,,1,3,2,,3,,2,0,,1,L7OK,200,0,0,3,0,0,0,0,,0,1,"
    "3,0,0,0,0,0,0,0,,,0,0,1,1,,,,Layer7 check passed,,2,3,4,,,,172.18.0.5:5000\n"
    "app,hp-b8,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/3,0,1,0,1,0,2,0,,1,3,3,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,0,0,"
    "0,0,0,0,0,0,0,0,,,0,0,0,0,,,,Layer4 connection problem,,2,3,1,,,,172.18.0.6:5000\n"
    "metrics,BACKEND,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,0,0,0,,0,9,,,1,4,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,"
    "0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,\n"
)


def test_parse_stat_reads_per_server_counters() -> None:
    stats = haproxy.parse_stat(STAT)
    assert list(stats) == ["hp-b6", "hp-b7", "hp-b8"]
    old, new, bad = stats["hp-b6"], stats["hp-b7"], stats["hp-b8"]
    assert (old.scur, old.stot, old.hrsp_2xx, old.hrsp_5xx, old.rtime) == (2, 812, 800, 12, 3)
    assert old.status == "DRAIN" and not old.serving and old.healthy is False
    assert new.healthy and not new.serving  # checked, but weight 0: no traffic yet
    assert new.addr == "172.18.0.5:5000" and new.check_desc == "Layer7 check passed"
    assert bad.check_status == "L4CON" and not bad.healthy  # UP before its first check, never healthy
    assert [s.state for s in servers_from(stats)] == ["drain", "ready", "ready"]


@pytest.mark.parametrize("text", ["Unknown command.\n", "", "No such proxy.\n"])
def test_parse_stat_refuses_other_answers(text: str) -> None:
    with pytest.raises(DeployError, match="unexpected answer"):
        haproxy.parse_stat(text)


def _haproxy() -> str:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(exe).exists():
        unavailable("haproxy is not installed: apt-get install -y haproxy socat")
    if shutil.which("socat") is None:
        unavailable("socat is not installed: apt-get install -y socat")
    return exe


def test_rendered_config_is_accepted_by_haproxy(tmp_path: Path) -> None:
    exe = _haproxy()
    config = haproxy.EdgeConfig("hp", "qa", CHECK)
    servers = [SRV, haproxy.Server("hp-b6", "172.18.0.4", 5000, 100, "drain")]
    text = haproxy.render(config, servers)
    assert "    server hp-b7 172.18.0.5:5000 check inter 500 fastinter 500 rise 2 fall 3 weight 0" in text
    assert "option httpchk GET /ready" in text and "http-check expect status 200" in text
    assert "retries 3" in text and "option redispatch 1" in text and "retry-on conn-failure" in text
    for servers_ in (servers, []):
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy.render(config, servers_))
        res = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", ["/a b", "/x#y", "/q'"])
def test_render_refuses_values_that_would_change_the_config(path: str) -> None:
    with pytest.raises(DeployError, match="cannot go into the edge config"):
        haproxy.render(haproxy.EdgeConfig("hp", "qa", haproxy.Check(path=path)), [])


# -- EdgeControl on a real HAProxy (the admin socket reached locally instead of through docker exec) -----


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


class _App(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = self.server.server_address[1].to_bytes(4, "big").hex().encode()  # type: ignore[union-attr]
        self.send_response(self.status if self.path == "/ready" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _app(status: int = 200) -> Iterator[http.server.ThreadingHTTPServer]:
    handler = type("App", (_App,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def local_edge(tmp_path: Path) -> Iterator[tuple[EdgeControl, int]]:
    """A real HAProxy on loopback with the rendered config; EdgeControl talks to its admin socket."""
    exe = _haproxy()
    port = free_port()
    sock = tmp_path / "admin.sock"
    cfg = tmp_path / "haproxy.cfg"
    config = haproxy.EdgeConfig("hp", "qa", CHECK, port)
    text = haproxy.render(config, []).replace(haproxy.ADMIN_SOCKET, str(sock))
    text = text.replace(haproxy.SHADOW_LUA, str(Path(edge_files.__file__).parent / "shadow.lua"))
    text = text.replace(f"bind :{port}", f"bind 127.0.0.1:{port}").replace(
        "bind :8404", f"bind 127.0.0.1:{free_port()}"
    )
    cfg.write_text(text)
    proc = subprocess.Popen(
        [exe, "-W", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def run(argv: list[str], stdin: bytes | None) -> Result:
        if argv[-2:] == ["stdio", haproxy.ADMIN_SOCKET]:
            argv = ["socat", "stdio", str(sock)]
        elif argv[-2:] == ["mlship-edge", "write-config"]:
            (tmp_path / "rendered.cfg").write_bytes(stdin or b"")
            return Result(0, "", "")
        out = subprocess.run(argv, input=stdin, capture_output=True, check=False, timeout=10)
        return Result(out.returncode, out.stdout.decode(), out.stderr.decode())

    try:
        wait_for(lambda: port_open(port) and sock.exists(), 10, "haproxy")
        yield EdgeControl(run, "hp-edge", config, "local"), port
    finally:
        proc.terminate()
        proc.wait(10)


def _until(what: str, check: object, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_swap_on_a_real_haproxy(local_edge: tuple[EdgeControl, int], tmp_path: Path) -> None:
    edge, port = local_edge
    url = f"http://127.0.0.1:{port}/"
    old_app, new_app = _app(), _app()
    old, new = next(old_app), next(new_app)
    try:
        edge.add(haproxy.Server("old", "127.0.0.1", old.server_address[1]))
        _until("old to pass its check", lambda: edge.stats()["old"].healthy)
        assert edge.stats()["old"].weight == 0
        edge.weight("old", haproxy.FULL_WEIGHT)
        assert get(url)[1] == old.server_address[1].to_bytes(4, "big").hex().encode()

        edge.add(haproxy.Server("new", "127.0.0.1", new.server_address[1]))
        edge.save()
        assert "server new 127.0.0.1" in (tmp_path / "rendered.cfg").read_text()
        _until("new to pass its check", lambda: edge.stats()["new"].healthy)
        assert {get(url)[1] for _ in range(10)} == {old.server_address[1].to_bytes(4, "big").hex().encode()}

        edge.weight("new", haproxy.FULL_WEIGHT)
        edge.state(["old"], "drain")
        assert {get(url)[1] for _ in range(10)} == {new.server_address[1].to_bytes(4, "big").hex().encode()}
        stats = edge.stats()
        assert stats["new"].serving and not stats["old"].serving and stats["old"].hrsp_2xx >= 1
        assert edge.wait_idle(["old"], time.monotonic() + 5) == {}
        edge.delete("old")
        assert list(edge.stats()) == ["new"]
        with pytest.raises(DeployError, match="refused"):
            edge.weight("old", 1)  # HAProxy's own words: no such server
    finally:
        for g in (old_app, new_app):
            next(g, None)


def test_a_failing_server_never_becomes_healthy(local_edge: tuple[EdgeControl, int]) -> None:
    edge, _ = local_edge
    sick_app = _app(status=503)
    sick = next(sick_app)
    try:
        edge.add(haproxy.Server("sick", "127.0.0.1", sick.server_address[1]))
        _until("a check to run", lambda: edge.stats()["sick"].check_status not in ("", "INI"))
        assert edge.stats()["sick"].check_status == "L7STS" and not edge.stats()["sick"].healthy
    finally:
        next(sick_app, None)
