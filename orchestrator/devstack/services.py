"""Real local services on loopback: Redis, dockerd, a registry, sshd deploy hosts, a git origin.

Used by the test fixtures and by ``orchestrator standalone``: both start the same real programs the
same way. Each service is a small class with start()/stop(); everything listens on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from orchestrator import defaults
from orchestrator.errors import InfrastructureError

DEFAULT_DOCKER_SOCKET = "/run/mlship/docker.sock"
DEFAULT_DOCKER_DATA = "/var/lib/mlship/docker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise InfrastructureError(f"{what} did not come up within {timeout:.0f}s" + (f": {last}" if last else ""))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def require_program(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        raise InfrastructureError(f"{name} is not installed: apt-get install -y {package}", program=name)
    return path


@dataclass
class RedisServer:
    """A redis-server with AOF on, ``maxmemory`` and noeviction, in its own directory; can be restarted."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None  # requirepass: whoever can write Redis can run builds
    maxmemory: str = "512mb"  # with noeviction: writes fail (a 503) at the limit, nothing is evicted
    args: tuple[str, ...] = ()  # more options, e.g. --replicaof HOST PORT (devstack/sentinel.py)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        exe = require_program("redis-server", "redis-server")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                "--maxmemory",
                self.maxmemory,
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--logfile",
                str(self.directory / "redis.log"),
                *(["--requirepass", self.password, "--masterauth", self.password] if self.password else []),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ping, defaults.SERVICE_START_TIMEOUT, f"redis-server on port {self.port}")
        return self

    def client(self) -> Any:
        """A plain decoding client of this very server (not through any sentinel)."""
        import redis

        return redis.Redis(port=self.port, password=self.password, socket_timeout=0.5, decode_responses=True)

    def _ping(self) -> bool:
        return bool(self.client().ping())

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(frozen=True)
class DockerdProcess:
    """A running dockerd, as its command line shows it."""

    pid: int
    argv: tuple[str, ...]

    def option(self, *names: str) -> str | None:
        """The value of the first of ``names`` given as ``--name value`` or ``--name=value``."""
        for i, arg in enumerate(self.argv):
            for name in names:
                if arg == name and i + 1 < len(self.argv):
                    return self.argv[i + 1]
                if arg.startswith(name + "="):
                    return arg[len(name) + 1 :]
        return None

    @property
    def data_root(self) -> Path:
        return Path(self.option("--data-root", "-g", "--graph") or "/var/lib/docker")

    @property
    def host(self) -> str:
        return self.option("-H", "--host") or "unix:///var/run/docker.sock"


def _process(pid: int) -> DockerdProcess | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    return DockerdProcess(pid, argv) if argv and Path(argv[0]).name == "dockerd" else None


def dockerd_processes() -> list[DockerdProcess]:
    procs = (_process(int(d.name)) for d in Path("/proc").iterdir() if d.name.isdigit())
    return [p for p in procs if p is not None]


def data_root_holder(data_root: Path, pidfile: Path | None = None) -> DockerdProcess | None:
    """The dockerd that already uses ``data_root`` (by its --data-root, or by a live ``pidfile``)."""
    root = data_root.resolve()
    for proc in dockerd_processes():
        if proc.data_root.resolve() == root:
            return proc
    if pidfile is not None:
        with contextlib.suppress(OSError, ValueError):
            return _process(int(pidfile.read_text().strip()))
    return None


def holder_message(holder: DockerdProcess, data_root: str) -> str:
    """What to do when another dockerd holds the data root: use it, or stop it."""
    head = f"another dockerd (pid {holder.pid}) already uses the data root {data_root}"
    if DockerDaemon.answers(holder.host):
        return f"{head}: use it with `export DOCKER_HOST={holder.host}`, or stop it (kill {holder.pid})"
    return (
        f"{head} but does not answer at {holder.host}: stop it (kill {holder.pid}), or set "
        "MLSHIP_DOCKER_DATA_ROOT to another directory"
    )


@dataclass
class DockerDaemon:
    """A Docker daemon: the one at DOCKER_HOST (or our well-known socket) if it answers, else one we start."""

    host: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started_here: bool = False
    log_path: Path | None = None
    # More dockerd options for a daemon started here (a second "host" on this machine: its own
    # bridge and address pool, its published ports on its own loopback address with ``--ip``).
    extra_args: tuple[str, ...] = ()

    @staticmethod
    def answers(host: str) -> bool:
        import docker

        try:
            client = docker.DockerClient(base_url=host, timeout=5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False

    def ensure(self, env: Mapping[str, str] | None = None, work: Path | None = None) -> DockerDaemon:
        env = os.environ if env is None else env
        candidates = [
            h
            for h in (
                env.get("DOCKER_HOST"),
                "unix://" + DEFAULT_DOCKER_SOCKET,
                "unix:///var/run/docker.sock",
            )
            if h
        ]
        for host in candidates:
            if self.answers(host):
                self.host = host
                return self
        return self.start(work or Path("/run/mlship"))

    def start(self, work: Path) -> DockerDaemon:
        if os.geteuid() != 0:
            raise InfrastructureError("no Docker daemon answers and starting dockerd needs root")
        exe = require_program("dockerd", "docker.io")
        data_root = os.environ.get("MLSHIP_DOCKER_DATA_ROOT", DEFAULT_DOCKER_DATA)
        # A second dockerd on a data root in use waits 60 s for containerd, then fails obscurely.
        holder = data_root_holder(Path(data_root), work / "docker.pid")
        if holder is not None:
            raise InfrastructureError(holder_message(holder, data_root), program="dockerd")
        work.mkdir(parents=True, exist_ok=True)
        sock = work / "docker.sock"
        self.host = f"unix://{sock}"
        self.log_path = work / "dockerd.log"
        Path(data_root).mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    exe,
                    "--data-root",
                    data_root,
                    "--exec-root",
                    str(work / "docker-exec"),
                    "-H",
                    self.host,
                    "--pidfile",
                    str(work / "docker.pid"),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_here = True
        try:
            wait_for(lambda: self.answers(self.host), defaults.DOCKERD_START_TIMEOUT, "dockerd", interval=0.5)
        except InfrastructureError:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
            raise InfrastructureError(f"dockerd did not start; its log ends with:\n{tail}") from None
        return self

    def remove_leftovers(self) -> list[str]:
        """Remove what earlier, killed runs deployed on this daemon (containers, networks, edge state).

        Only for a daemon dedicated to tests: restart policies would otherwise bring old edge proxies
        back on the ports the tests publish.
        """
        client = self.client()
        removed = []
        try:
            for c in client.containers.list(all=True):
                if any(k.startswith("mlship.") for k in (c.labels or {})):
                    c.remove(force=True)
                    removed.append(c.name)
            for net in client.networks.list(filters={"label": "mlship.managed=1"}):
                net.remove()
            for vol in client.volumes.list():
                if vol.name.endswith("-edge-state"):
                    vol.remove(force=True)
        finally:
            client.close()
        return removed

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.host, timeout=300)

    def stop(self) -> None:
        if self.started_here and self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


def ensure_base_image(docker_host: str, progress: Callable[[str], None] | None = None) -> str:
    """Return a usable BASE_IMAGE tag, building localbase/python:3.11 once if nothing can be pulled.

    ``progress`` receives progress lines (debootstrap takes about 70 s the first time).
    """
    import docker

    from orchestrator.devstack import base_image

    client = docker.DockerClient(base_url=docker_host, timeout=600)
    try:
        return base_image.ensure(client, say=progress)
    finally:
        client.close()


@dataclass
class Registry:
    """``docker-registry serve`` on 127.0.0.1 with filesystem storage."""

    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        exe = require_program("docker-registry", "docker-registry")
        self.directory.mkdir(parents=True, exist_ok=True)
        cfg = self.directory / "config.yml"
        cfg.write_text(
            "version: 0.1\nlog: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.directory / 'data'}}}, "
            "delete: {enabled: true}}\n"
            f"http: {{addr: {self.addr}}}\n"
        )
        with open(self.directory / "registry.log", "ab") as log:
            self.proc = subprocess.Popen([exe, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), defaults.SERVICE_START_TIMEOUT, f"registry on {self.addr}")
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def keygen(path: Path, comment: str = "mlship") -> Path:
    """An ed25519 key pair at ``path`` / ``path``.pub (created once)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True
        )
    return path


@dataclass
class SshdHost:
    """An sshd on 127.0.0.1 standing for a deploy host; its ``docker`` talks to ``docker_host``."""

    name: str
    directory: Path
    docker_host: str
    client_pubkey: str
    port: int = field(default_factory=free_port)
    user: str = field(default_factory=lambda: os.environ.get("USER") or "root")
    proc: subprocess.Popen[bytes] | None = None
    address: str = "127.0.0.1"  # another loopback address stands for another machine

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    def known_hosts_line(self) -> str:
        pub = (self.directory / "ssh_host_ed25519_key.pub").read_text().split()
        return f"[{self.address}]:{self.port} {pub[0]} {pub[1]}\n"

    def start(self) -> SshdHost:
        exe = require_program("sshd", "openssh-server")
        self.directory.mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        keygen(self.host_key, f"host-{self.name}")
        auth = self.directory / "authorized_keys"
        auth.write_text(self.client_pubkey.strip() + "\n")
        auth.chmod(0o600)
        cfg = self.directory / "sshd_config"
        cfg.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {auth}\nPidFile {self.directory / 'sshd.pid'}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nMaxSessions 50\nMaxStartups 50\n"
            f"SetEnv DOCKER_HOST={self.docker_host}\nLogLevel ERROR\n"
        )
        self.proc = subprocess.Popen(
            [exe, "-D", "-f", str(cfg), "-E", str(self.directory / "sshd.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: port_open(self.port, self.address),
            defaults.SERVICE_START_TIMEOUT,
            f"sshd '{self.name}' on port {self.port}",
        )
        return self

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    full_env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
        **(env or {}),
    }
    out = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise InfrastructureError(f"git {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout.strip()


# Package data name → name in the repository (a dotfile would not match package-data globs).
EXAMPLE_BUILD_FILES = {
    "Dockerfile": "Dockerfile",
    "dockerignore": ".dockerignore",
    "pipeline.yaml": "pipeline.yaml",
}


def write_example(dst: Path) -> None:
    """Write the example repository (Dockerfile, .dockerignore, pipeline.yaml, inference/) into ``dst``.

    From the installed package: the build files are package data (in a checkout, links to the
    checkout's own files) and ``inference/`` is the installed ``inference`` package.
    """
    import inference

    files = resources.files("orchestrator.devstack") / "example"
    for name, target in (
        ("Dockerfile", "Dockerfile"),
        ("dockerignore", ".dockerignore"),
        ("pipeline.yaml", "pipeline.yaml"),
    ):
        (dst / target).write_bytes((files / name).read_bytes())
    shutil.copytree(
        Path(inference.__file__).parent,
        dst / "inference",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.skops"),
    )


@dataclass
class GitOrigin:
    """A bare repository standing for the GitHub repository, with a working clone to commit from."""

    directory: Path

    @property
    def bare(self) -> Path:
        return self.directory / "origin.git"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def create(self, files: Mapping[str, str | bytes] | None = None, copy_example: bool = True) -> GitOrigin:
        """Init the bare repo and its first commit on main: the example app, plus ``files``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        git("init", "-q", "--bare", "-b", "main", str(self.bare))
        git("clone", "-q", str(self.bare), str(self.work))
        git("checkout", "-q", "-b", "main", cwd=self.work)
        if copy_example:
            write_example(self.work)
        self._write(files or {})
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "-m", "Initial commit", "--allow-empty", cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        return self

    def _write(self, files: Mapping[str, str | bytes]) -> None:
        for rel, content in files.items():
            path = self.work / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)

    def head(self, branch: str = "main") -> str:
        return git("rev-parse", f"refs/heads/{branch}", cwd=self.bare)

    def commit(self, branch: str, files: Mapping[str, str | bytes], message: str = "change") -> str:
        """Commit ``files`` on ``branch`` (created from main if new) and push; return the sha."""
        git("fetch", "-q", "origin", cwd=self.work)
        existing = git("ls-remote", "--heads", "origin", branch, cwd=self.work)
        base = f"origin/{branch}" if existing else "origin/main"
        git("checkout", "-q", "-B", branch, base, cwd=self.work)
        self._write(files)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "-q", "origin", branch, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def merge(self, branch: str, into: str = "main", message: str | None = None) -> str:
        """Merge ``branch`` into ``into`` with a merge commit (as GitHub does); return the merge sha."""
        git("fetch", "-q", "origin", cwd=self.work)
        git("checkout", "-q", "-B", into, f"origin/{into}", cwd=self.work)
        git(
            "merge",
            "-q",
            "--no-ff",
            "-m",
            message or f"Merge branch '{branch}'",
            f"origin/{branch}",
            cwd=self.work,
        )
        git("push", "-q", "origin", into, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)
