"""The edge's HAProxy, as data: runtime API commands (exact strings), ``show stat`` parsing, the config.

Pure: nothing here talks to a host. ``orchestrator.deploy.edgectl`` sends these strings to the edge's
admin socket (``docker exec -i <edge> socat stdio /run/haproxy/admin.sock``) and reads the answers.

One backend, ``app``, holds the environment's app containers as servers named like their containers.
Servers are added at runtime at weight 0 (an added server counts as UP before its first check), given
traffic with ``set server ... weight``, drained, and deleted; the rendered config repeats the current
servers so that an edge restart (which forgets runtime servers) comes back serving the same ones.
Weights are 0..256, so a later canary can split traffic by weight; ``show stat`` gives per-server
counters (requests, 2xx/5xx, response time) for an analysis.
"""

from __future__ import annotations

import csv
import io
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources

from orchestrator.errors import DeployError

BACKEND = "app"
EDGE_PORT = (
    8080  # the edge listens here in its container (published as container.publish), whatever the app's port
)
ADMIN_SOCKET = "/run/haproxy/admin.sock"
FULL_WEIGHT = 100
SHADOW_LUA = "/usr/local/share/mlship/shadow.lua"  # in the edge image (orchestrator/deploy/edge/)
TIMING_RING = "timing"  # the ring the frontend logs every request into, for an analysis's p99
MAX_WEIGHT = 256
STATES = ("ready", "drain", "maint")
# What the runtime API answers on success; anything else a mutating command prints is an error.
OK_REPLIES = ("New server registered.", "Server deleted.", "Shadow started.", "Shadow stopped.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ADDR = re.compile(r"^[0-9a-fA-F.:]{2,45}$")


@dataclass(frozen=True)
class Check:
    """The edge's HTTP health check of every server (from the environment's ``health:``)."""

    path: str = "/ready"
    status: int = 200
    interval_ms: int = 1000
    rise: int = 3
    fall: int = 3


@dataclass(frozen=True)
class Server:
    """One app container as a server of the backend."""

    name: str
    addr: str  # the container's IP on the environment's network
    port: int
    weight: int = 0
    state: str = "ready"  # ready | drain | maint

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise DeployError(f"server name {self.name!r} is not allowed (letters, digits, '_', '.', '-')")
        if not _ADDR.match(self.addr) or not 0 < self.port < 65536:
            raise DeployError(f"server address {self.addr}:{self.port} of {self.name} is not an IP:port")
        _check_weight(self.weight)
        if self.state not in STATES:
            raise DeployError(f"server state {self.state!r} is not one of {', '.join(STATES)}")


def _check_weight(weight: int) -> None:
    if not 0 <= weight <= MAX_WEIGHT:
        raise DeployError(f"server weight {weight} is outside 0..{MAX_WEIGHT}")


def _ref(name: str) -> str:
    if not _NAME.match(name):
        raise DeployError(f"server name {name!r} is not allowed (letters, digits, '_', '.', '-')")
    return f"{BACKEND}/{name}"


def server_options(check: Check) -> str:
    """The check options of a server. Repeated on every server: dynamic servers ignore default-server."""
    return (
        f"check inter {check.interval_ms} fastinter {check.interval_ms} rise {check.rise} fall {check.fall}"
    )


# -- runtime API commands ------------------------------------------------------------------------------


def add_server(server: Server, check: Check) -> list[str]:
    """Add ``server`` at weight 0 with its health check on, out of maintenance (still no traffic)."""
    ref = _ref(server.name)
    return [
        f"add server {ref} {server.addr}:{server.port} {server_options(check)} weight 0",
        f"enable health {ref}",
        f"enable server {ref}",
    ]


def set_weight(name: str, weight: int) -> str:
    _check_weight(weight)
    return f"set server {_ref(name)} weight {weight}"


def set_state(name: str, state: str) -> str:
    if state not in STATES:
        raise DeployError(f"server state {state!r} is not one of {', '.join(STATES)}")
    return f"set server {_ref(name)} state {state}"


def del_server(name: str) -> list[str]:
    """Deleting needs maintenance first; the API refuses while the server still has connections."""
    return [set_state(name, "maint"), f"shutdown sessions server {_ref(name)}", f"del server {_ref(name)}"]


def show_timings() -> str:
    """The ring of per-request timings the frontend logs (``<counter> <server> <Tr ms> <status>``)."""
    return f"show events {TIMING_RING}"


def shadow_start(percent: int, path: str, stable: str, candidate: str) -> str:
    """Copy ``percent``% of the POSTs to ``path`` to ``stable`` and ``candidate`` (ip:port), keeping
    both answers (the edge's shadow.lua)."""
    if not 0 < percent <= 100:
        raise DeployError(f"shadow percent {percent} is outside 1..100")
    if not path.startswith("/") or any(ch.isspace() or ch in ";#\\'\"" for ch in path):
        raise DeployError(f"shadow path {path!r} must start with / and have no spaces, quotes, ';' or '#'")
    for addr in (stable, candidate):
        ip, _, port = addr.rpartition(":")
        if not _ADDR.match(ip) or not port.isdigit():
            raise DeployError(f"shadow target {addr!r} is not an IP:port")
    return f"mlship shadow start {percent} {path} {stable} {candidate}"


def shadow_stop() -> str:
    return "mlship shadow stop"


def shadow_dump() -> str:
    """The answers recorded since the last dump (and they are forgotten by the edge)."""
    return "mlship shadow dump"


def show_stat() -> str:
    """Counters of every server (type 4), as CSV; ``parse_stat`` keeps the backend's."""
    return "show stat -1 4 -1"


def join(commands: Iterable[str]) -> bytes:
    """One line for the admin socket: in non-interactive mode it runs ``;``-separated commands."""
    cmds = list(commands)
    for c in cmds:
        if any(ch in c for ch in ";\n\r"):
            raise DeployError(f"runtime API command {c!r} contains a separator")
    return ("; ".join(cmds) + "\n").encode()


def errors_in(reply: str) -> list[str]:
    """The lines of a reply to mutating commands that are not a success message."""
    return [line.strip() for line in reply.splitlines() if line.strip() and line.strip() not in OK_REPLIES]


# -- show stat -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStat:
    """One server's row of ``show stat`` (the fields the deploy and a later analysis read)."""

    name: str
    status: str  # UP, UP 1/3, DOWN, DRAIN, MAINT, NOLB...
    weight: int
    scur: int  # current sessions
    stot: int  # total sessions
    hrsp_2xx: int
    hrsp_5xx: int
    rtime: int  # average response time (ms) over the last 1024 requests
    check_status: str  # L7OK, L7STS, L4CON, INI...
    check_desc: str
    addr: str

    @property
    def healthy(self) -> bool:
        """Checked and fully up: L7OK and no failed check pending (``UP``, not ``UP 1/3``)."""
        return self.check_status == "L7OK" and self.status == "UP"

    @property
    def serving(self) -> bool:
        """Takes new requests: weight above 0, not drained or in maintenance."""
        return self.weight > 0 and not self.status.startswith(("DRAIN", "MAINT", "NOLB"))


def _int(row: dict[str, str], key: str) -> int:
    value = row.get(key) or "0"
    return int(value) if value.lstrip("-").isdigit() else 0


def parse_stat(text: str) -> dict[str, ServerStat]:
    """``show stat`` CSV → {server name: ServerStat} (servers only; proxies' summary rows skipped)."""
    body = text.lstrip()
    if not body.startswith("# "):
        raise DeployError(f"unexpected answer to show stat: {text.strip()[:200]!r}")
    rows = csv.DictReader(io.StringIO(body[2:]))
    out: dict[str, ServerStat] = {}
    for row in rows:
        name = row.get("svname") or ""
        if row.get("pxname") != BACKEND or name in ("", "FRONTEND", "BACKEND"):
            continue
        out[name] = ServerStat(
            name=name,
            status=row.get("status") or "",
            weight=_int(row, "weight"),
            scur=_int(row, "scur"),
            stot=_int(row, "stot"),
            hrsp_2xx=_int(row, "hrsp_2xx"),
            hrsp_5xx=_int(row, "hrsp_5xx"),
            rtime=_int(row, "rtime"),
            check_status=row.get("check_status") or "",
            check_desc=row.get("check_desc") or "",
            addr=row.get("addr") or "",
        )
    return out


# -- the config ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeConfig:
    """What the rendered haproxy.cfg says besides its servers."""

    app: str  # container.name
    environment: str
    check: Check
    port: int = EDGE_PORT  # the edge listens here inside its container (published as container.publish)


def template() -> string.Template:
    return string.Template(resources.files("orchestrator.deploy.edge").joinpath("haproxy.cfg").read_text())


def server_line(server: Server, check: Check) -> str:
    disabled = " disabled" if server.state == "maint" else ""
    weight = 0 if server.state == "drain" else server.weight
    return (
        f"    server {server.name} {server.addr}:{server.port} {server_options(check)} "
        f"weight {weight}{disabled}"
    )


def check_lines(config_text: str) -> list[str]:
    """The backend-wide check settings of a rendered config (a change needs a reload to apply)."""
    return [
        line.strip()
        for line in config_text.splitlines()
        if line.strip().startswith(("option httpchk", "http-check expect"))
    ]


def render(config: EdgeConfig, servers: Sequence[Server]) -> str:
    """The whole haproxy.cfg with ``servers`` (a restart comes back with exactly these)."""
    for value in (config.app, config.environment, config.check.path):
        if any(ch.isspace() or ch in "#\\'\"" for ch in value):
            raise DeployError(f"{value!r} cannot go into the edge config (spaces, quotes, '#', '\\')")
    lines = [server_line(s, config.check) for s in servers]
    return template().substitute(
        app=config.app,
        environment=config.environment,
        port=config.port,
        shadow_lua=SHADOW_LUA,
        path=config.check.path,
        status=config.check.status,
        servers="\n".join(lines) if lines else "    # no servers yet",
    )
