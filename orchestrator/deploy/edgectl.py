"""Driving one host's edge: the runtime API over ``docker exec -i <edge> socat stdio <admin socket>``.

``EdgeControl`` sends the command strings of ``orchestrator.deploy.haproxy`` through a runner (the
deploy step's SSH ``sh``), checks the answers, reads ``show stat`` and re-renders the mounted config
after each change, so an edge restart comes back with the servers it had.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from orchestrator.deploy import commands as remote
from orchestrator.deploy import haproxy
from orchestrator.errors import DeployError


class RunResult(Protocol):
    exit_code: int
    stdout: str
    stderr: str


# (argv, stdin) -> the finished command's result (exit code, captured stdout/stderr)
Runner = Callable[[list[str], bytes | None], RunResult]


def servers_from(stats: dict[str, haproxy.ServerStat]) -> list[haproxy.Server]:
    """The backend's servers as ``show stat`` reports them (for re-rendering the config)."""
    out = []
    for st in stats.values():
        ip, _, port = st.addr.rpartition(":")
        state = (
            "drain"
            if st.status.startswith("DRAIN")
            else "maint"
            if st.status.startswith("MAINT")
            else "ready"
        )
        out.append(haproxy.Server(st.name, ip, int(port), min(st.weight, haproxy.MAX_WEIGHT), state))
    return out


class EdgeControl:
    """The runtime API of the edge container ``edge``, reached through ``run``."""

    def __init__(self, run: Runner, edge: str, config: haproxy.EdgeConfig, where: str) -> None:
        self.run = run
        self.edge = edge
        self.config = config
        self.where = where

    def _send(self, commands: Sequence[str]) -> str:
        res = self.run(remote.edge_admin(self.edge), haproxy.join(commands))
        if res.exit_code != 0:
            raise DeployError(
                f"the edge {self.edge} on {self.where} did not take `{'; '.join(commands)}`: exit code "
                f"{res.exit_code} {(res.stderr or res.stdout).strip()[-300:]}",
                host=self.where,
            )
        return res.stdout

    def api(self, commands: Sequence[str]) -> None:
        """Run mutating commands; raise with HAProxy's own words if one was refused."""
        errors = haproxy.errors_in(self._send(commands))
        if errors:
            raise DeployError(
                f"the edge {self.edge} on {self.where} refused `{'; '.join(commands)}`: {' '.join(errors)}",
                host=self.where,
            )

    def stats(self) -> dict[str, haproxy.ServerStat]:
        return haproxy.parse_stat(self._send([haproxy.show_stat()]))

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until the admin socket answers (a just-started edge)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.stats()
                return
            except DeployError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def save(self) -> None:
        """Re-render the mounted config with the servers the edge has now."""
        text = haproxy.render(self.config, servers_from(self.stats()))
        res = self.run(remote.rewrite_edge_config(self.edge), text.encode())
        if res.exit_code != 0:
            raise DeployError(
                f"writing the config of the edge {self.edge} on {self.where} failed: "
                f"{(res.stderr or res.stdout).strip()[-500:]}",
                host=self.where,
            )

    def add(self, server: haproxy.Server) -> None:
        self.api(haproxy.add_server(server, self.config.check))

    def weight(self, name: str, weight: int) -> None:
        self.api([haproxy.set_weight(name, weight)])

    def state(self, names: Sequence[str], state: str) -> None:
        if names:
            self.api([haproxy.set_state(n, state) for n in names])

    def delete(self, name: str, timeout: float = 15.0) -> None:
        """Maintenance, cut its sessions, delete; retried while idle connections keep it referenced."""
        deadline = time.monotonic() + timeout
        while True:
            if name not in self.stats():
                return
            try:
                self.api(haproxy.del_server(name))
                return
            except DeployError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def wait_idle(self, names: Sequence[str], deadline: float) -> dict[str, int]:
        """Until ``names`` have no current sessions or ``deadline`` passes; their sessions left."""
        while True:
            stats = self.stats()
            busy = {n: stats[n].scur for n in names if n in stats and stats[n].scur > 0}
            if not busy or time.monotonic() >= deadline:
                return busy
            time.sleep(0.2)
