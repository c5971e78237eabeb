"""docker_build / docker_run / docker_push with the Docker SDK.

Each step first builds its request as pure data (BuildRequest, RunRequest, PushRequest: exact SDK
kwargs, tested as such), then a thin layer executes it: output streamed line by line into the
build log, a kill function registered with the cancel token, errors sorted into StepFailed (the
build's own fault: Dockerfile error, non-zero exit) and InfrastructureError (daemon, registry).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import urllib3.exceptions
from docker.utils import parse_bytes

from orchestrator import defaults
from orchestrator.build import model_registry
from orchestrator.build.artifacts import ensure_dir
from orchestrator.config import ContainerLimits
from orchestrator.errors import InfrastructureError, StepFailed
from orchestrator.pipeline import DockerBuildSpec, DockerPushSpec, DockerRunSpec
from orchestrator.steps.base import StepContext

# What reading a docker-py stream raises once _abort_stream has shut its socket down (or the daemon
# went away mid-stream): urllib3 and http.client errors that requests does not wrap here.
STREAM_CUT = (urllib3.exceptions.HTTPError, http.client.HTTPException)
STOP_GRACE = defaults.DOCKER_STOP_GRACE
NO_NEW_PRIVILEGES = ("no-new-privileges:true",)
AUTH_ERRORS = ("unauthorized", "authentication required", "denied", "no basic auth credentials")


def image_ref(image: str, tag: str) -> str:
    return f"{image}:{tag}"


def split_ref(ref: str) -> tuple[str, str]:
    """'host:5000/repo:tag' → ('host:5000/repo', 'tag')."""
    repo, _, tag = ref.rpartition(":")
    if not repo or "/" in tag:
        return ref, "latest"
    return repo, tag


# -- pure requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildRequest:
    path: str
    dockerfile: str
    tags: tuple[str, ...]  # full refs; the first is given to the build, the rest tagged after
    buildargs: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    pull: bool = False
    nocache: bool = False
    target: str | None = None
    timeout: int = 3600
    memory: str | None = None  # the build's RUN containers (legacy builder's container_limits)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``APIClient.build``."""
        kw: dict[str, Any] = {
            "path": self.path,
            "dockerfile": self.dockerfile,
            "tag": self.tags[0],
            "buildargs": dict(self.buildargs),
            "labels": dict(self.labels),
            "pull": self.pull,
            "nocache": self.nocache,
            "rm": True,
            "forcerm": True,
            "decode": True,
            "timeout": self.timeout,
        }
        if self.target:
            kw["target"] = self.target
        if self.memory:
            kw["container_limits"] = {"memory": parse_bytes(self.memory)}
        return kw


def default_tags(variables: Mapping[str, str]) -> list[str]:
    return [variables.get("BUILD_NUMBER") or "latest"]


def build_request(
    spec: DockerBuildSpec,
    image: str,
    workspace: Path,
    labels: Mapping[str, str],
    timeout: float,
    variables: Mapping[str, str],
    limits: ContainerLimits | None = None,
) -> BuildRequest:
    return BuildRequest(
        path=str(workspace / spec.context),
        dockerfile=spec.dockerfile,
        tags=tuple(image_ref(image, t) for t in (spec.tags or default_tags(variables))),
        buildargs=dict(spec.build_args),
        labels=dict(labels),
        pull=spec.pull,
        nocache=spec.no_cache,
        target=spec.target,
        timeout=int(timeout) + 30,
        memory=limits.memory if limits else None,
    )


@dataclass(frozen=True)
class RunRequest:
    image: str
    command: tuple[str, ...] | None
    environment: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    user: str | None = None
    network_mode: str | None = None
    volumes: tuple[str, ...] = ()
    privileged: bool = False
    mem_limit: str | None = None
    nano_cpus: int | None = None
    pids_limit: int | None = None
    security_opt: tuple[str, ...] = ()

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DockerClient.containers.create``."""
        kw: dict[str, Any] = {
            "image": self.image,
            "command": list(self.command) if self.command is not None else None,
            "environment": dict(self.environment),
            "labels": dict(self.labels),
            "detach": True,
            "privileged": self.privileged,
        }
        optional = {
            "working_dir": self.working_dir,
            "user": self.user,
            "network_mode": self.network_mode,
            "mem_limit": self.mem_limit,
            "nano_cpus": self.nano_cpus,
            "pids_limit": self.pids_limit,
        }
        kw.update({k: v for k, v in optional.items() if v is not None})
        if self.volumes:
            kw["volumes"] = list(self.volumes)
        if self.security_opt:
            kw["security_opt"] = list(self.security_opt)
        return kw


def run_request(
    spec: DockerRunSpec,
    image: str,
    labels: Mapping[str, str],
    artifacts: Path | None = None,
    limits: ContainerLimits | None = None,
) -> RunRequest:
    """``artifacts``: the build's artifact directory, bind-mounted read-write at ``spec.artifacts``
    (the runner's mount, so it needs no allow.host_mounts). ``limits``: the repository's defaults
    for memory and processes (the pipeline's own values were checked against the maxima at load);
    every container also gets no-new-privileges (setuid binaries cannot raise a process's rights)."""
    limits = limits or ContainerLimits()
    volumes = tuple(spec.volumes)
    if spec.artifacts is not None and artifacts is not None:
        volumes += (f"{artifacts}:{spec.artifacts}:rw",)
    return RunRequest(
        image=spec.image or image,
        command=tuple(spec.command) if spec.command is not None else None,
        environment=dict(spec.env),
        labels=dict(labels),
        working_dir=spec.workdir,
        user=spec.user,
        network_mode=spec.network,
        volumes=volumes,
        privileged=spec.privileged,
        mem_limit=spec.memory or limits.memory,
        nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
        pids_limit=spec.pids_limit or limits.pids,
        security_opt=NO_NEW_PRIVILEGES,
    )


@dataclass(frozen=True)
class PushRequest:
    repository: str
    tag: str
    auth: Mapping[str, str] | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``APIClient.push``."""
        kw: dict[str, Any] = {"repository": self.repository, "tag": self.tag, "stream": True, "decode": True}
        if self.auth:
            kw["auth_config"] = dict(self.auth)
        return kw


def push_requests(spec: DockerPushSpec, image: str, variables: Mapping[str, str]) -> list[PushRequest]:
    auth = {"username": spec.auth.username, "password": spec.auth.password} if spec.auth else None
    return [PushRequest(image, tag, auth) for tag in (spec.tags or default_tags(variables))]


# -- the thin layer -------------------------------------------------------------------------------


def _infra(what: str, exc: Exception) -> InfrastructureError:
    return InfrastructureError(f"{what}: the Docker daemon failed or is unreachable: {exc}")


def _abort_stream(api: Any, gen: Iterator[Any]) -> None:
    """Cut the HTTP stream behind a docker-py generator: the daemon sees the client go and stops."""
    frame = getattr(gen, "gi_frame", None)
    response = frame.f_locals.get("response") if frame is not None else None
    if response is None:
        return
    try:
        sock = api._get_raw_response_socket(response)
        # Over a unix socket docker-py hands back the SocketIO wrapper; only the socket itself can be
        # shut down, and only a shutdown (not a close) wakes the thread blocked reading the stream.
        sock = getattr(sock, "_sock", sock)
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:
        with contextlib.suppress(Exception):
            response.close()


def image_labels(ctx: StepContext) -> dict[str, str]:
    """Labels on the built image. Not the build id: containers inherit image labels, and the janitor
    removes containers by build id, so a deployed container must never carry one by inheritance."""
    return {"org.opencontainers.image.revision": ctx.build.sha, "mlship.repo": ctx.build.repo}


def _limits(ctx: StepContext) -> ContainerLimits:
    repo = ctx.settings.repo(ctx.build.repo)
    return repo.reach.limits if repo else ContainerLimits()


def _inside_workspace(ctx: StepContext, req: BuildRequest, spec: DockerBuildSpec) -> None:
    """The context and the Dockerfile, with symlinks followed, must stay inside the checkout: a
    symlink to / would send the worker's files (and secrets) into the image."""
    root = ctx.workspace.resolve()
    context = Path(req.path)
    if not context.is_dir():
        raise StepFailed(f"build context '{spec.context}' is not a directory in the repository")
    dockerfile = context / req.dockerfile
    if not dockerfile.is_file():
        raise StepFailed(f"Dockerfile '{spec.dockerfile}' not found in context '{spec.context}'")
    for what, path in (("build context", context), ("Dockerfile", dockerfile)):
        if not path.resolve().is_relative_to(root):
            raise StepFailed(
                f"{what} '{path.relative_to(ctx.workspace)}' is a symlink that leads out of the "
                "repository; refused (build only from files in the checkout)"
            )


def _build_entry(ctx: StepContext, api: Any, entry: dict[str, Any]) -> str:
    """Log one entry of the build stream; the image id if the entry names it."""
    if "stream" in entry:
        ctx.log.write(entry["stream"])
    elif "status" in entry and "progress" not in entry:
        ctx.log.write(f"{entry.get('id', '') + ': ' if entry.get('id') else ''}{entry['status']}\n")
    elif "error" in entry:
        message = entry["error"].strip()
        ctx.log.line(f"docker build failed: {message}", "stderr")
        if not _daemon_answers(api):  # a daemon going down reports errors as build errors
            raise InfrastructureError(f"docker build: the Docker daemon stopped during the build: {message}")
        raise StepFailed(f"docker build failed: {message}")
    aux = entry.get("aux")
    return str(aux["ID"]) if isinstance(aux, dict) and aux.get("ID") else ""


def _stream_build(ctx: StepContext, api: Any, req: BuildRequest) -> str:
    """Run the build, streaming its output; the image id (docker errors sorted as in step_container)."""
    image_id = ""
    try:
        stream = api.build(**req.kwargs())
        remove = ctx.cancel.on_cancel(lambda: _abort_stream(api, stream))
        try:
            for entry in stream:
                image_id = _build_entry(ctx, api, entry) or image_id
        finally:
            remove()
    except (requests.exceptions.RequestException, OSError, *STREAM_CUT) as exc:
        ctx.stopped()
        raise _infra("docker build", exc) from exc
    except docker.errors.APIError as exc:
        ctx.stopped()
        if exc.is_server_error() and "connection" in str(exc).lower():
            raise _infra("docker build", exc) from exc
        raise StepFailed(f"docker build failed: {exc.explanation or exc}") from exc
    except docker.errors.DockerException as exc:  # raised by the SDK itself: a bad tag, a bad context
        ctx.stopped()
        raise StepFailed(f"docker build failed: {exc}") from exc
    ctx.stopped()
    return image_id


def docker_build(ctx: StepContext) -> None:
    """Build the image from the workspace, streaming the build output; tag it with every tag."""
    spec: DockerBuildSpec = ctx.step.spec
    req = build_request(
        spec, ctx.pipeline.image, ctx.workspace, image_labels(ctx), ctx.remaining(), ctx.vars, _limits(ctx)
    )
    _inside_workspace(ctx, req, spec)
    api = ctx.docker.api
    image_id = _stream_build(ctx, api, req)
    if not image_id:
        raise StepFailed("docker build ended without producing an image (see the log above)")
    try:
        for ref in req.tags[1:]:
            repo, tag = split_ref(ref)
            api.tag(image_id, repo, tag)
    except docker.errors.DockerException as exc:
        raise _infra("docker tag", exc) from exc
    ctx.build.image = req.tags[0]
    ctx.record.details.update({"image_id": image_id, "tags": list(req.tags)})
    ctx.log.line(f"built {image_id[:19]} tagged {', '.join(req.tags)}")


def _daemon_answers(api: Any, settle: float = 1.0) -> bool:
    """True if the daemon still answers ``settle`` seconds after an error (a stopping daemon fails
    the running build with an error of its own first, then stops answering)."""
    time.sleep(settle)
    try:
        return bool(api.ping())
    except Exception:
        return False


def _stop_container(container: Any) -> None:
    with contextlib.suppress(Exception):
        container.stop(timeout=STOP_GRACE)


def _pump(stream: Any, ctx: StepContext) -> None:
    with contextlib.suppress(Exception):
        for out, err in stream:
            if out:
                ctx.log.write(out, "stdout")
            if err:
                ctx.log.write(err, "stderr")


def _wait_exit(container: Any) -> int:
    """Wait for the container to exit; short HTTP waits in a loop so a dead daemon shows up as an error."""
    while True:
        try:
            result = container.wait(timeout=30)
            return int(result.get("StatusCode", -1))
        except requests.exceptions.ReadTimeout:
            continue
        except requests.exceptions.ConnectionError as exc:
            if "timed out" in str(exc).lower():
                continue
            raise


@contextlib.contextmanager
def step_container(
    ctx: StepContext, kwargs: dict[str, Any], image: str, what: str, refused: str | None = None
) -> Iterator[Any]:
    """The step's container: stopped on cancel, removed afterwards, whatever happens.

    Docker errors are sorted: a refused request (4xx) fails the step with ``refused`` (default
    "<what> failed"), a failing or unreachable daemon is an infrastructure error.
    """
    container = None
    try:
        try:
            container = ctx.docker.containers.create(**kwargs)
        except docker.errors.ImageNotFound as exc:
            raise StepFailed(f"image {image} not found: {exc.explanation}") from exc
        remove = ctx.cancel.on_cancel(lambda: _stop_container(container))
        try:
            ctx.record.details["container"] = container.id[:12]
            yield container
        finally:
            remove()
    except (requests.exceptions.RequestException, OSError) as exc:
        ctx.stopped()
        raise _infra(what, exc) from exc
    except docker.errors.APIError as exc:
        ctx.stopped()
        if exc.is_client_error():
            raise StepFailed(f"{refused or what + ' failed'}: {exc.explanation or exc}") from exc
        raise _infra(what, exc) from exc
    finally:
        if container is not None:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def docker_run(ctx: StepContext) -> None:
    """Run the command in the image (default: the one just built); its exit code decides the step."""
    spec: DockerRunSpec = ctx.step.spec
    if not (spec.image or ctx.build.image):
        raise StepFailed("no image to run: add a docker_build step before this one or set image:")
    artifacts = ensure_dir(ctx.settings.workspace, ctx.build.id) if spec.artifacts is not None else None
    req = run_request(spec, ctx.build.image, ctx.container_labels(), artifacts, _limits(ctx))
    client = ctx.docker
    with step_container(ctx, req.kwargs(), req.image, "docker run") as container:
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
        with contextlib.suppress(Exception):  # a silent command must not time the log stream out
            api = client.api
            api._disable_socket_timeout(api._get_raw_response_socket(stream._response))
        pump = threading.Thread(target=_pump, args=(stream, ctx), daemon=True)
        pump.start()
        ctx.log.line(f"starting container {container.id[:12]} from {req.image}")
        container.start()
        code = _wait_exit(container)
        pump.join(10)
    ctx.stopped()
    ctx.record.exit_code = code
    ctx.log.line(f"exit code {code}")
    if code != 0:
        raise StepFailed(f"command exited with code {code}", exit_code=code)


def _push_once(api: Any, req: PushRequest, ctx: StepContext) -> str:
    """One push attempt; returns the digest. Raises StepFailed-free errors for the retry loop."""
    stream = api.push(**req.kwargs())
    remove = ctx.cancel.on_cancel(lambda: _abort_stream(api, stream))
    digest = ""
    try:
        for entry in stream:
            if "error" in entry:
                raise _PushError(str(entry["error"]).strip())
            aux = entry.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
            status = entry.get("status")
            if status and "progress" not in entry:
                ctx.log.write(f"{entry.get('id', '') + ': ' if entry.get('id') else ''}{status}\n")
    finally:
        remove()
    return digest


class _PushError(Exception):
    pass


def docker_push(ctx: StepContext) -> None:
    """Push every tag, retrying with bounded backoff; record the registry digest on the build."""
    spec: DockerPushSpec = ctx.step.spec
    if not ctx.build.image:
        raise StepFailed("nothing to push: no docker_build step produced an image")
    requests_ = push_requests(spec, ctx.pipeline.image, ctx.vars)
    api = ctx.docker.api
    built_repo, built_tag = split_ref(ctx.build.image)
    digest = ""
    for req in requests_:
        if (req.repository, req.tag) != (built_repo, built_tag):
            try:
                api.tag(ctx.build.image, req.repository, req.tag)
            except docker.errors.DockerException as exc:
                raise _infra("docker tag", exc) from exc
        last = ""
        for attempt in range(1, spec.retries + 1):
            ctx.stopped()
            try:
                digest = _push_once(api, req, ctx) or digest
                break
            except (
                _PushError,
                docker.errors.DockerException,
                requests.exceptions.RequestException,
                OSError,
                *STREAM_CUT,
            ) as exc:
                ctx.stopped()
                last = str(exc)
                if any(a in last.lower() for a in AUTH_ERRORS):
                    raise InfrastructureError(
                        f"registry refused the push of {image_ref(req.repository, req.tag)}: {last}; check "
                        "the credentials (docker_push.auth) and the registry's permissions"
                    ) from exc
                if attempt < spec.retries:
                    delay = min(8.0, 1.0 * 2 ** (attempt - 1))
                    ctx.log.line(
                        f"push attempt {attempt} failed ({last}); retrying in {delay:.0f}s", "stderr"
                    )
                    if ctx.cancel.wait(delay):
                        ctx.stopped()
        else:
            raise InfrastructureError(
                f"push of {image_ref(req.repository, req.tag)} failed after {spec.retries} attempts: {last}"
            )
        ctx.log.line(f"pushed {image_ref(req.repository, req.tag)}" + (f" {digest}" if digest else ""))
    number_tag = ctx.vars.get("BUILD_NUMBER", "")
    tags = [r.tag for r in requests_]
    chosen = number_tag if number_tag in tags else tags[0]
    ctx.build.image = image_ref(ctx.pipeline.image, chosen)
    if digest:
        ctx.build.digest = digest
    ctx.record.details.update(
        {"digest": digest, "pushed": [image_ref(r.repository, r.tag) for r in requests_]}
    )
    # The model travels beside the image: any worker can then deploy or gate this build.
    published = model_registry.publish_build_model(ctx, requests_[0].auth)
    if published is not None:
        ctx.record.details["model"] = {"ref": published.ref, "manifest": published.manifest}


def remove_build_containers(client: Any, build_id: int, wait: float = 0) -> list[str]:
    """Force-remove every container labelled with the build (a lost worker's leftovers)."""
    removed: list[str] = []
    deadline = time.monotonic() + wait
    while True:
        for c in client.containers.list(all=True, filters={"label": f"mlship.build={build_id}"}):
            with contextlib.suppress(docker.errors.DockerException):
                c.remove(force=True)
                removed.append(c.id[:12])
        if time.monotonic() >= deadline:
            return removed
        time.sleep(0.5)


def register(kinds: dict[str, Any]) -> None:
    kinds.update({"docker_build": docker_build, "docker_run": docker_run, "docker_push": docker_push})
