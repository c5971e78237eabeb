"""The docker commands a deploy runs on a host, built as argv lists (pure; no I/O).

Every function returns ``list[str]``; ``orchestrator.deploy.ssh`` joins it with ``shlex.join``, so each
value (image refs, env values, labels from pipeline.yaml, names built from webhook data) reaches
the remote shell as one quoted word, never as shell syntax. Positional values come after ``--``
so a value that starts with ``-`` cannot become an option. Tests assert the exact argv.

The layout per environment on a host (see docs/deploy.md):

    network  <name>-net            user-defined bridge; the edge reaches the app containers on it
    edge     <name>-edge           HAProxy from mlship's edge image, publishes <publish>:<port>
    volume   <name>-edge-state     the edge's /state: its haproxy.cfg (survives an edge restart)
    app      <name>-b<number>      one per build, no published port; a server of the edge's backend

Nothing runs inside the app image but the app itself: health checks are the edge's, and model files
are stored by a helper container of the edge image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator import labels
from orchestrator.deploy.haproxy import ADMIN_SOCKET
from orchestrator.errors import DeployError

Argv = list[str]

EDGE_CONFIG = "/state/haproxy.cfg"
LEGACY_STATE_FILE = "/state/upstream"  # the old TCP edge's upstream (read once, to take it over)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
_NET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class AppContainer:
    """Everything ``docker run`` needs for one build's app container."""

    name: str
    image: str
    network: str
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    volumes: Sequence[str] = ()
    memory: str | None = None
    cpus: float | None = None
    restart: str = "unless-stopped"
    network_alias: str | None = None


@dataclass(frozen=True)
class EdgeContainer:
    """The edge of one environment on one host."""

    name: str
    image: str
    network: str
    state_volume: str
    publish: int
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)


def names(container_name: str, build_number: int) -> dict[str, str]:
    """The names of one environment's parts on a host (network, edge, state volume, this build's app)."""
    return {
        "network": f"{container_name}-net",
        "edge": f"{container_name}-edge",
        "state": f"{container_name}-edge-state",
        "app": f"{container_name}-b{build_number}",
    }


def _docker(*args: str, config: str | None = None) -> Argv:
    return ["docker", *(["--config", config] if config else []), *args]


def _check_keys(kind: str, values: Mapping[str, str], pattern: re.Pattern[str]) -> None:
    for key in values:
        if not pattern.match(key):
            raise DeployError(
                f"container {kind} name {key!r} is not allowed: use letters, digits, '_', '.', '-' "
                "(and '/' for labels), starting with a letter or digit",
                key=key,
            )


def registry_of(image: str) -> str:
    """The registry host of an image ref (Docker's rule: a first part with '.' or ':' or localhost)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def login(registry: str, username: str, config: str) -> Argv:
    """``docker login`` reading the password from stdin (never an argument, so never in ps or logs).

    ``config`` is a per-deploy client config directory (on tmpfs), removed after the deploy,
    so the credentials are not left in the host user's ~/.docker/config.json.
    """
    return _docker("login", "--username", username, "--password-stdin", "--", registry, config=config)


def make_config_dir(path: str) -> Argv:
    return ["mkdir", "-m", "700", "-p", "--", path]


def remove_config_dir(path: str) -> Argv:
    return ["rm", "-rf", "--", path]


def pull(image: str, config: str | None = None) -> Argv:
    return _docker("pull", "--quiet", "--", image, config=config)


def network_exists(network: str) -> Argv:
    return _docker("network", "inspect", "--format", "{{.Name}}", "--", network)


def network_create(network: str) -> Argv:
    return _docker("network", "create", "--driver", "bridge", "--label", f"{labels.MANAGED}=1", "--", network)


def run(app: AppContainer) -> Argv:
    """``docker run --detach`` for an app container; our mlship.* labels come last so they win."""
    _check_keys("env", app.env, _ENV_KEY)
    _check_keys("label", app.labels, _LABEL_KEY)
    argv = _docker("run", "--detach", "--name", app.name, "--network", app.network, "--restart", app.restart)
    if app.network_alias:
        argv += ["--network-alias", app.network_alias]
    for key, value in app.labels.items():
        argv += ["--label", f"{key}={value}"]
    for key, value in app.env.items():
        argv += ["--env", f"{key}={value}"]
    for volume in app.volumes:
        argv += ["--volume", volume]
    if app.memory:
        argv += ["--memory", app.memory]
    if app.cpus:
        argv += ["--cpus", f"{app.cpus:g}"]
    return [*argv, "--", app.image]


def create_edge(edge: EdgeContainer) -> Argv:
    """``docker create`` of the edge (started by ``start``): HAProxy from the edge image, on the
    environment's network, publishing the stable port, its config on the state volume."""
    argv = _docker(
        "create",
        "--name",
        edge.name,
        "--network",
        edge.network,
        "--restart",
        "unless-stopped",
        "--publish",
        f"{edge.publish}:{edge.port}",
        "--volume",
        f"{edge.state_volume}:/state",
    )
    for key, value in edge.labels.items():
        argv += ["--label", f"{key}={value}"]
    return [*argv, "--", edge.image, "serve"]


def start(container: str) -> Argv:
    return _docker("start", "--", container)


def write_edge_config(state_volume: str, image: str) -> Argv:
    """Store the config (stdin) on the state volume before the edge exists, after ``haproxy -c``."""
    return _docker(
        "run",
        "--interactive",
        "--rm",
        "--network",
        "none",
        "--label",
        f"{labels.ROLE}=edge-config",
        "--volume",
        f"{state_volume}:/state",
        "--",
        image,
        "write-config",
    )


def rewrite_edge_config(edge: str) -> Argv:
    """Replace the running edge's config file (stdin) so a restart keeps today's servers."""
    return _docker("exec", "--interactive", edge, "mlship-edge", "write-config")


def read_edge_config(edge: str) -> Argv:
    return _docker("exec", edge, "cat", EDGE_CONFIG)


def reload_edge(edge: str) -> Argv:
    """HAProxy's master re-reads the config and starts a new worker; the old one finishes its
    connections (the listening sockets pass over: ``expose-fd listeners``)."""
    return _docker("kill", "--signal", "USR2", "--", edge)


_IP_PORT = re.compile(r"^[0-9a-fA-F.:]{2,45}:[0-9]{1,5}$")
_HTTP_PATH = re.compile(r"^/[A-Za-z0-9._~/%?=&+-]*$")


def edge_fetch(edge: str, addr: str) -> Argv:
    """A raw TCP exchange from inside the edge container with an app container at ``addr`` (ip:port):
    the request on stdin, the answer on stdout (socat; the edge image has no HTTP client)."""
    if not _IP_PORT.match(addr):
        raise DeployError(f"{addr!r} is not an ip:port")
    return _docker("exec", "--interactive", edge, "socat", "-t", "5", "stdio", f"TCP:{addr}")


def http_get(path: str) -> bytes:
    """The HTTP/1.0 request ``edge_fetch`` sends for ``path`` (the server closes after answering)."""
    if not _HTTP_PATH.match(path):
        raise DeployError(f"{path!r} is not a plain URL path")
    return f"GET {path} HTTP/1.0\r\nAccept: text/plain\r\n\r\n".encode()


def edge_admin(edge: str) -> Argv:
    """The edge's HAProxy runtime API: commands on stdin, the answers on stdout."""
    return _docker("exec", "--interactive", edge, "socat", "stdio", ADMIN_SOCKET)


# One-time takeover of an environment served by the old TCP edge (``inference.edge``): the new edge is
# created beside it under a temporary name, then the old one is removed and the new one renamed and
# started in one remote command, so the published port is free only for the moment in between.
TAKEOVER_SCRIPT = 'docker rm --force -- "$1" >/dev/null && docker rename "$2" "$1" && docker start -- "$1"'


def take_over_edge(old: str, new: str) -> Argv:
    return ["sh", "-c", TAKEOVER_SCRIPT, "mlship-edge-takeover", old, new]


def legacy_upstream(edge: str) -> Argv:
    """The ``host:port`` the old TCP edge forwards to (its state file)."""
    return _docker("exec", edge, "cat", LEGACY_STATE_FILE)


def container_ip(container: str, network: str) -> Argv:
    """The container's IP address on ``network`` (empty if it is not attached)."""
    if not _NET_NAME.match(network):
        raise DeployError(f"network name {network!r} is not allowed")
    fmt = "{{with index .NetworkSettings.Networks " + f'"{network}"' + "}}{{.IPAddress}}{{end}}"
    return _docker("container", "inspect", "--format", fmt, "--", container)


def container_label(container: str, key: str) -> Argv:
    """The value of label ``key`` on the container (empty if unset); exit code 1 if it does not exist."""
    if not _LABEL_KEY.match(key):
        raise DeployError(f"label name {key!r} is not allowed")
    return _docker(
        "container", "inspect", "--format", "{{index .Config.Labels " + f'"{key}"' + "}}", "--", container
    )


def state(container: str) -> Argv:
    """Prints the container's status (running, exited, restarting...) and its restart count; exit code 1
    if it does not exist."""
    return _docker("container", "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", "--", container)


def list_app_containers(app_name: str) -> Argv:
    """Names of every app container of this environment (running or not), one per line."""
    return _docker(
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        labels.selector(labels.APP, app_name),
        "--filter",
        labels.selector(labels.ROLE, labels.ROLE_APP),
        "--format",
        "{{.Names}}",
    )


def logs(container: str, tail: int = 50) -> Argv:
    return _docker("logs", "--tail", str(tail), "--", container)


def stop(container: str, grace: int) -> Argv:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    return _docker("stop", "--time", str(grace), "--", container)


def rm(container: str) -> Argv:
    return _docker("rm", "--force", "--volumes", "--", container)


def image_rm(image: str) -> Argv:
    """Without --force: the daemon refuses to remove an image a container still uses (a safety net)."""
    return _docker("image", "rm", "--", image)


def kill_group(pid: int, grace: float = 1.0) -> Argv:
    """Kill a remote process group (a cancelled command): TERM, a short grace, then KILL."""
    if pid <= 1:
        raise ValueError(f"refusing to kill process group {pid}")
    # "-PGID" without "--": dash's kill builtin rejects "--"; the pid is validated as an int above.
    script = 'kill -TERM "-$0" 2>/dev/null || exit 0; sleep "$1"; kill -KILL "-$0" 2>/dev/null; exit 0'
    return ["sh", "-c", script, str(pid), f"{grace:g}"]


# -- the build's model on the hosts' model volume -------------------------------------------------------

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_DIR = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class UploadFile:
    name: str
    size: int
    sha256: str


def model_volume(volumes: Sequence[str], model_path: str) -> tuple[str, str]:
    """``(volume name, its mount path)``: the first named volume mounted at the directory of ``model_path``.

    This is where the deploy puts the build's model (``<mount>/<sha256[:16]>/<file>``).
    """
    directory = model_path.rstrip("/").rpartition("/")[0] or "/"
    for spec in volumes:
        parts = spec.split(":")
        if (
            len(parts) >= 2
            and parts[1].rstrip("/") == directory.rstrip("/")
            and not parts[0].startswith(("/", ".", "~"))
            and "/" not in parts[0]
        ):
            return parts[0], parts[1].rstrip("/")
    raise DeployError(
        f"the build has a model to ship, but no named volume in container.volumes is mounted at "
        f'{directory} (the directory of MODEL_PATH={model_path}): add one, e.g. "ml_vol:{directory}:ro"',
        model_path=model_path,
    )


def upload_model(
    edge_image: str, volume: str, mount: str, directory: str, files: Sequence[UploadFile]
) -> Argv:
    """``docker run -i --rm`` of the edge image's ``store-model``: a tar of ``files`` on stdin goes to
    ``<mount>/<directory>/`` of ``volume``, each file checked against its sha256, then renamed in."""
    if not _FILE_NAME.match(directory):
        raise DeployError(f"model directory name {directory!r} is not allowed", directory=directory)
    args: list[str] = []
    for f in files:
        if not _FILE_NAME.match(f.name) or not _SHA256.match(f.sha256) or f.size < 0:
            raise DeployError(f"model file {f.name!r} cannot be uploaded (name, size or sha256 invalid)")
        args += [f.name, f.sha256]
    return _on_volume(
        "model-upload", edge_image, volume, mount, True, "store-model", f"{mount}/{directory}", *args
    )


def prune_models(edge_image: str, volume: str, mount: str, keep: Iterable[str], grace: float) -> Argv:
    """``docker run --rm`` of the edge image's ``prune-models``: removes the model directories of
    ``volume`` other than ``keep`` (``<sha256[:16]>`` names) and older than ``grace`` seconds."""
    names = sorted(set(keep))
    bad = [k for k in names if not _MODEL_DIR.match(k)]
    if bad:
        raise DeployError(f"model directory names {bad!r} are not sha256 prefixes", names=bad)
    minutes = str(max(1, math.ceil(grace / 60)))
    return _on_volume("model-prune", edge_image, volume, mount, False, "prune-models", mount, minutes, *names)


def _on_volume(role: str, image: str, volume: str, mount: str, interactive: bool, *command: str) -> Argv:
    """``docker run --rm`` of an edge-image helper, as root, without network, with ``volume`` mounted
    read-write at ``mount`` (root inside: a fresh volume's root is root-owned)."""
    argv = _docker(
        "run",
        *(["--interactive"] if interactive else []),
        "--rm",
        "--user",
        "0",
        "--network",
        "none",
        "--label",
        f"{labels.ROLE}={role}",
        "--volume",
        f"{volume}:{mount}",
    )
    return [*argv, "--", image, *command]
