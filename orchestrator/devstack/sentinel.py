"""A Redis Sentinel test bed: a primary, a replica and three sentinels, real processes on loopback.

``SentinelBed(directory).start()`` starts them on free ports in ``directory`` and returns once the
sentinels see the replica and each other (a failover can happen from then on); ``stop()`` ends them
all. ``kill_primary()`` SIGKILLs whichever server the sentinels name as primary; ``wait_promoted``
waits until they name another; ``restart`` brings a killed server back (the sentinels make an old
primary a replica of the new one). Settings for mlship: ``settings_fields()``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator import defaults
from orchestrator.devstack.services import RedisServer, _stop, free_port, require_program, wait_for
from orchestrator.errors import InfrastructureError

SERVICE = "mlship"
START_TIMEOUT = 2 * defaults.SERVICE_START_TIMEOUT  # sentinels find each other by hello messages every 2 s
QUORUM = 2
FAST_SYNC = ("--repl-diskless-sync-delay", "0")  # a (re)joining replica syncs at once, not after 5 s


def sentinel_program() -> list[str]:
    """``redis-sentinel`` (Debian's redis-sentinel package), else ``redis-server --sentinel``."""
    path = shutil.which("redis-sentinel")
    if path:
        return [path]
    return [require_program("redis-server", "redis-sentinel"), "--sentinel"]


def sentinel_conf(
    port: int, directory: Path, primary_port: int, down_after_ms: int, failover_ms: int, password: str | None
) -> str:
    """One sentinel's configuration file (sentinels rewrite it as they learn the topology)."""
    lines = [
        f"port {port}",
        "bind 127.0.0.1",
        "daemonize no",
        f'dir "{directory}"',
        f'logfile "{directory / "sentinel.log"}"',
        f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {QUORUM}",
        f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}",
        f"sentinel failover-timeout {SERVICE} {failover_ms}",
        f"sentinel parallel-syncs {SERVICE} 1",
    ]
    if password:
        lines.append(f"sentinel auth-pass {SERVICE} {password}")
    return "\n".join(lines) + "\n"


def replica_acks(primary: RedisServer) -> bool:
    """True once a replica acknowledges a write to ``primary`` (WAIT 1, 100 ms): "online" in INFO is
    not enough, a replica that just synced sends its first ACK up to a second later."""
    pipe = primary.client().pipeline(transaction=False)
    pipe.set("devstack:replica-probe", "1")
    pipe.wait(1, 100)
    return bool(pipe.execute()[1] >= 1)


@dataclass
class SentinelProcess:
    """One ``redis-sentinel`` with its own directory and configuration file."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, conf: str) -> SentinelProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / "sentinel.conf"
        path.write_text(conf)
        # sentinel_program() is [redis-sentinel] or [redis-server, --sentinel]: the file goes first
        cmd = sentinel_program()
        self.proc = subprocess.Popen(
            [cmd[0], str(path), *cmd[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: bool(self.client().ping()), START_TIMEOUT, f"sentinel on {self.port}")
        return self

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port, socket_timeout=0.5, decode_responses=True)

    def master(self) -> dict[str, Any]:
        """What this sentinel knows of the primary (SENTINEL MASTER)."""
        return dict(self.client().sentinel_master(SERVICE))

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


@dataclass
class SentinelBed:
    """A primary, a replica (``RedisServer`` with AOF) and three sentinels, quorum 2."""

    directory: Path
    password: str | None = None  # requirepass and masterauth of both servers; the sentinels' auth-pass
    down_after_ms: int = 1000  # a primary silent this long is down (small: the failover test is short)
    failover_ms: int = 5000
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[SentinelProcess] = field(default_factory=list)

    def start(self) -> SentinelBed:
        try:
            primary = RedisServer(self.directory / "redis-a", password=self.password, args=FAST_SYNC).start()
            self.servers.append(primary)
            replica = RedisServer(
                self.directory / "redis-b",
                password=self.password,
                args=(*FAST_SYNC, "--replicaof", "127.0.0.1", str(primary.port)),
            ).start()
            self.servers.append(replica)
            wait_for(lambda: replica_acks(primary), START_TIMEOUT, "the replica's first sync")
            for i in range(3):
                s = SentinelProcess(self.directory / f"sentinel-{i}")
                self.sentinels.append(s)
                s.start(
                    sentinel_conf(
                        s.port, s.directory, primary.port, self.down_after_ms, self.failover_ms, self.password
                    )
                )
            wait_for(self._ready, START_TIMEOUT, "sentinels seeing the replica and each other")
        except InfrastructureError:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        others = len(self.sentinels) - 1
        masters = [s.master() for s in self.sentinels]
        return all(int(m["num-slaves"]) >= 1 and int(m["num-other-sentinels"]) >= others for m in masters)

    @property
    def addresses(self) -> tuple[str, ...]:
        """``redis_sentinels`` for mlship's settings."""
        return tuple(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def settings_fields(self) -> dict[str, Any]:
        """The Settings fields that point mlship at this bed (the url carries only the password)."""
        auth = f":{self.password}@" if self.password else ""
        return {
            "redis_url": f"redis://{auth}127.0.0.1:1/0",  # host and port unused with sentinels
            "redis_sentinels": self.addresses,
            "redis_sentinel_service": SERVICE,
        }

    def primary_port(self) -> int | None:
        """The port a majority of the sentinels name as primary (None while they disagree)."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            addr = None
            with contextlib.suppress(Exception):  # a sentinel that does not answer has no vote
                addr = s.client().sentinel_get_master_addr_by_name(SERVICE)
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best and best[1] >= QUORUM else None

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def primary(self) -> RedisServer:
        port = self.primary_port()
        if port is None:
            raise InfrastructureError("the sentinels do not agree on a primary")
        return self.server(port)

    def kill_primary(self) -> RedisServer:
        """SIGKILL the current primary; returns it (stopped, to ``restart`` later)."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_promoted(self, old: RedisServer, timeout: float) -> RedisServer:
        """Wait until the sentinels name a primary other than ``old`` and it answers as one."""

        def promoted() -> bool:
            port = self.primary_port()
            if port is None or port == old.port:
                return False
            return bool(self.server(port).client().info("replication")["role"] == "master")

        wait_for(promoted, timeout, "the sentinels' failover")
        return self.primary()

    def restart(self, server: RedisServer) -> None:
        """Start a killed server again on its port and data (an old primary rejoins as a replica)."""
        server.start()

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for r in self.servers:
            r.stop()
