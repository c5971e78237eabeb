"""The docker commands a deploy runs on a host, built as argv lists (pure; no I/O).

Every function returns ``list[str]``; ``orchestrator.deploy.ssh`` joins it with ``shlex.join``, so each
value (image refs, env values, labels from pipeline.yaml, names built from webhook data) reaches
the remote shell as one quoted word, never as shell syntax. Positional values come after ``--``
so a value that starts with ``-`` cannot become an option. Tests assert the exact argv.

The swap layout per environment on a host (see docs/deploy.md):

    network  <name>-net            user-defined bridge; containers find each other by name
    edge     <name>-edge           python3 -m inference.edge serve, publishes <publish>:<port>
    volume   <name>-edge-state     the edge's /state (upstream file survives an edge restart)
    app      <name>-b<number>      one per build; the edge forwards new connections to one of them
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.errors import DeployError

Argv = list[str]

STATE_FILE = "/state/upstream"
LABEL_ROLE = "mlship.role"
LABEL_APP = "mlship.app"
LABEL_BUILD = "mlship.build-number"
EDGE_MODULE = ("python3", "-m", "inference.edge")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")


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
    return _docker("network", "create", "--driver", "bridge", "--label", "mlship.managed=1", "--", network)


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


def run_edge(
    name: str,
    image: str,
    network: str,
    state_volume: str,
    publish: int,
    port: int,
    labels: Mapping[str, str] | None = None,
) -> Argv:
    """The edge proxy: started once per environment and host, it publishes the stable port."""
    argv = _docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        network,
        "--restart",
        "unless-stopped",
        "--publish",
        f"{publish}:{port}",
        "--volume",
        f"{state_volume}:/state",
    )
    for key, value in (labels or {}).items():
        argv += ["--label", f"{key}={value}"]
    return [*argv, "--", image, *EDGE_MODULE, "serve", "--listen", f"0.0.0.0:{port}", "--state", STATE_FILE]


def probe(edge_or_app: str, url: str, status: int, timeout: float) -> Argv:
    """One HTTP health probe, run inside a container on the environment's network."""
    return _docker(
        "exec", edge_or_app, *EDGE_MODULE, "probe", url, "--status", str(status), "--timeout", f"{timeout:g}"
    )


def set_upstream(edge: str, upstream: str) -> Argv:
    """Point the edge's new connections at ``upstream`` (host:port). Root inside the container: the
    state volume is root-owned, the edge process itself runs as the image's unprivileged user."""
    return _docker("exec", "--user", "0", edge, *EDGE_MODULE, "set", "--state", STATE_FILE, upstream)


def read_upstream(edge: str) -> Argv:
    return _docker("exec", edge, "cat", STATE_FILE)


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
        f"label={LABEL_APP}={app_name}",
        "--filter",
        f"label={LABEL_ROLE}=app",
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

# Runs in the image on the host: reads each file's exact byte count from stdin into a temp file in the
# target directory, checks its sha256, then renames it into place (atomic; the files are immutable and
# named by hash, so a repeated upload rewrites identical bytes). Never a shell: argv only.
UPLOAD_SCRIPT = """\
import hashlib, os, sys, tempfile
d, a = sys.argv[1], sys.argv[2:]
os.makedirs(d, mode=0o755, exist_ok=True)
src = sys.stdin.buffer
for i in range(0, len(a), 3):
    name, left, want = a[i], int(a[i + 1]), a[i + 2]
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".upload-")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            while left:
                b = src.read(min(left, 1 << 20))
                if not b:
                    sys.exit(f"{name}: the stream ended {left} bytes early")
                h.update(b)
                f.write(b)
                left -= len(b)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != want:
            sys.exit(f"{name}: received sha256 {h.hexdigest()}, expected {want}")
        os.chmod(tmp, 0o444)
        os.replace(tmp, os.path.join(d, name))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
print("stored", d, " ".join(a[0::3]))
"""
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_DIR = re.compile(r"^[0-9a-f]{16}$")

# Runs in the image on the host: removes the volume's model directories (named <sha256[:16]>) that are
# not in argv's keep list and were not written in the last ``grace`` seconds (another environment
# sharing the volume may have just uploaded one it has not recorded yet). Symlinks and other names
# are never touched. Prints what it removed.
PRUNE_SCRIPT = """\
import os, re, shutil, sys, time
root, grace, keep = sys.argv[1], float(sys.argv[2]), set(sys.argv[3:])
gone = []
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if (re.fullmatch("[0-9a-f]{16}", name) and name not in keep and not os.path.islink(path)
            and os.path.isdir(path) and time.time() - os.stat(path).st_mtime > grace):
        shutil.rmtree(path)
        gone.append(name)
print("removed", len(gone), "unrecorded model(s)" + (": " + " ".join(gone) if gone else ""))
"""


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


def upload_model(image: str, volume: str, mount: str, directory: str, files: Sequence[UploadFile]) -> Argv:
    """``docker run -i --rm`` in ``image`` that stores ``files`` (their bytes, in order, on stdin) in
    ``<mount>/<directory>/`` of ``volume``. Root inside: a fresh volume's root is root-owned."""
    if not _FILE_NAME.match(directory):
        raise DeployError(f"model directory name {directory!r} is not allowed", directory=directory)
    args: list[str] = []
    for f in files:
        if not _FILE_NAME.match(f.name) or not _SHA256.match(f.sha256) or f.size < 0:
            raise DeployError(f"model file {f.name!r} cannot be uploaded (name, size or sha256 invalid)")
        args += [f.name, str(f.size), f.sha256]
    return _on_volume(
        "model-upload", image, volume, mount, "--interactive", UPLOAD_SCRIPT, f"{mount}/{directory}", *args
    )


def prune_models(image: str, volume: str, mount: str, keep: Iterable[str], grace: float) -> Argv:
    """``docker run --rm`` in ``image`` that removes the model directories of ``volume`` other than
    ``keep`` (``<sha256[:16]>`` names) and older than ``grace`` seconds."""
    names = sorted(set(keep))
    bad = [k for k in names if not _MODEL_DIR.match(k)]
    if bad:
        raise DeployError(f"model directory names {bad!r} are not sha256 prefixes", names=bad)
    return _on_volume("model-prune", image, volume, mount, None, PRUNE_SCRIPT, mount, f"{grace:g}", *names)


def _on_volume(
    role: str, image: str, volume: str, mount: str, flag: str | None, script: str, *args: str
) -> Argv:
    """``docker run --rm`` of a python ``script`` in ``image``, as root, without network, with
    ``volume`` mounted read-write at ``mount`` (root inside: a fresh volume's root is root-owned)."""
    argv = _docker(
        "run",
        *([flag] if flag else []),
        "--rm",
        "--user",
        "0",
        "--network",
        "none",
        "--label",
        f"{LABEL_ROLE}={role}",
        "--volume",
        f"{volume}:{mount}",
    )
    return [*argv, "--", image, "python3", "-c", script, *args]
