"""Driving one host's edge: the runtime API over ``docker exec -i <edge> socat stdio <admin socket>``.

``EdgeControl`` sends the command strings of ``orchestrator.deploy.haproxy`` through a runner (the
deploy step's SSH ``sh``), checks the answers, reads ``show stat`` and re-renders the mounted config
after each change, so an edge restart comes back with the servers it had.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from orchestrator.deploy import commands as remote
from orchestrator.deploy import haproxy
from orchestrator.errors import DeployError, NotFound, OrchestratorError


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

    def __init__(
        self,
        run: Runner,
        edge: str,
        config: haproxy.EdgeConfig,
        where: str,
        fence: Callable[[str], None] | None = None,
    ) -> None:
        self.run = run
        self.edge = edge
        self.config = config
        self.where = where
        # Called before every change (add/weight/state/del, save, reload) with what it changes; it
        # raises to stop a deploy that no longer holds its lease and lock (deploy/fence.py).
        self.fence = fence or (lambda what: None)

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
        self.fence(f"the edge change `{'; '.join(commands)}` on {self.where}")
        errors = haproxy.errors_in(self._send(commands))
        if errors:
            raise DeployError(
                f"the edge {self.edge} on {self.where} refused `{'; '.join(commands)}`: {' '.join(errors)}",
                host=self.where,
            )

    def stats(self) -> dict[str, haproxy.ServerStat]:
        return haproxy.parse_stat(self._send([haproxy.show_stat()]))

    def query(self, command: str) -> str:
        """A read-only command's answer as HAProxy prints it (e.g. ``mlship shadow dump``)."""
        return self._send([command])

    def stats_and_timings(self) -> tuple[dict[str, haproxy.ServerStat], str]:
        """``show stat`` and the timing ring in one round trip (an analysis reads both each interval)."""
        text = self._send([haproxy.show_stat(), haproxy.show_timings()])
        stat, _, events = text.lstrip().partition("\n\n")
        return haproxy.parse_stat(stat), events

    def timings(self) -> str:
        """The ring of per-request timings (``show events timing``), as HAProxy prints it."""
        return self._send([haproxy.show_timings()])

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
        self.fence(f"saving the edge config on {self.where}")
        res = self.run(remote.rewrite_edge_config(self.edge), text.encode())
        if res.exit_code != 0:
            raise DeployError(
                f"writing the config of the edge {self.edge} on {self.where} failed: "
                f"{(res.stderr or res.stdout).strip()[-500:]}",
                host=self.where,
            )

    def check_changed(self) -> bool:
        """True if the running edge checks servers differently from this deploy's ``health:``."""
        res = self.run(remote.read_edge_config(self.edge), None)
        want = haproxy.check_lines(haproxy.render(self.config, []))
        return res.exit_code != 0 or haproxy.check_lines(res.stdout) != want

    def reload(self) -> None:
        """Apply the saved config (new check settings) without dropping connections."""
        self.fence(f"reloading the edge on {self.where}")
        res = self.run(remote.reload_edge(self.edge), None)
        if res.exit_code != 0:
            raise DeployError(f"reloading the edge {self.edge} on {self.where} failed: {res.stderr.strip()}")
        time.sleep(0.5)  # the master forks the new worker; then its admin socket answers
        self.wait_ready()

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


# -- operator inspection: every host's show stat for a deployed environment ---------------------------

_APP_CONTAINER = re.compile(r"^(?P<app>.+)-b\d+(-\d+)?$")
_HOST = re.compile(r"^(?P<user>[^@]+)@(?P<host>.+):(?P<port>\d+)$")


def edge_name(container: str) -> str:
    """``<name>-edge`` from a deployment record's app container ``<name>-b<N>[-k]``."""
    m = _APP_CONTAINER.match(container)
    if not m:
        raise DeployError(f"cannot tell the environment's edge from container name {container!r}")
    return f"{m['app']}-edge"


def inspect(settings: Any, store: Any, repo: str, environment: str) -> dict[str, Any]:
    """``show stat`` of the edge on every host of a deployed environment (read-only, over SSH)."""
    from orchestrator.deploy.ssh import RemoteHost, Target, key_from_settings

    dep = store.get_deployment(repo, environment)
    if dep is None:
        raise NotFound(f"{repo} has no deployment in {environment}: nothing to inspect")
    edge, key = edge_name(dep.container), key_from_settings(settings)
    hosts: dict[str, Any] = {}
    for spec in dep.hosts:
        m = _HOST.match(spec)
        if not m:
            hosts[spec] = {"error": "not a user@host:port"}
            continue
        target = Target(m["host"], int(m["port"]), m["user"])
        try:
            with RemoteHost(target, key, settings.known_hosts) as host:
                res = host.run(
                    remote.edge_admin(edge), stdin=haproxy.join([haproxy.show_stat()]), capture=True
                )
            stats = haproxy.parse_stat(res.stdout) if res.exit_code == 0 else None
            hosts[spec] = (
                {"servers": {n: dataclasses.asdict(s) for n, s in stats.items()}}
                if stats is not None
                else {"error": (res.stderr or res.stdout).strip()[-300:]}
            )
        except OrchestratorError as exc:
            hosts[spec] = {"error": str(exc)}
    return {
        "repo": repo,
        "environment": environment,
        "edge": edge,
        "build_number": dep.build_number,
        "hosts": hosts,
    }
