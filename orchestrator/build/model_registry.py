"""A build's model in the pipeline's registry, as an OCI artifact beside its image.

The ``docker_push`` step publishes the model the build trained (``artifacts.find_model``) to the
repository of the app image, tag ``model-<build number>``: an OCI image manifest whose
``artifactType`` and config media type are ``application/vnd.mlship.model.v1+json``, one layer per
file (the model, then its ``model.json`` if any), each titled with its path in the artifacts. The
build records where it went (``Build.model``: the reference, the manifest digest, each file's sha256
and size). A deploy or a gate on a worker that lacks the build's artifacts fetches them by the
recorded manifest digest, never by the tag, and checks every byte against the recorded sha256s
before writing them into its own workspace. See docs/deploy.md, "The model".

Plain HTTP (the OCI distribution API) through ``requests``: blob upload POST + PUT ``?digest=``,
manifest PUT, GET by digest; Basic or Bearer token auth from the credentials the push step uses.
Whether a registry speaks TLS is the Docker daemon's answer (its insecure registries), so mlship
reaches a registry exactly as the daemon that pushed the image did.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import requests

from orchestrator import defaults
from orchestrator.build import artifacts
from orchestrator.errors import InfrastructureError, ModelUnavailable, StepFailed

if TYPE_CHECKING:
    from orchestrator.pipeline import Pipeline
    from orchestrator.steps.base import StepContext

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT_TYPE = "application/vnd.mlship.model.v1+json"  # also the config blob's media type
FILE_TYPE = "application/vnd.mlship.model.file.v1"  # a layer: one file of the artifacts, as is
TITLE = "org.opencontainers.image.title"
TAG_PREFIX = "model-"
MAX_MODEL_BYTES = 4 << 30  # one model file (the deploy upload reads it into memory)
MAX_MANIFEST_BYTES = 64 << 10  # a manifest or config blob of ours is well under 1 KB
CHUNK = 1 << 20
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


class RegistryError(Exception):
    """The registry refused, failed, or answered what was not recorded. ``unreachable``: no answer."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


# -- references and manifests (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class Repository:
    """``registry`` host[:port] and the ``name`` inside it, from an image ref."""

    registry: str
    name: str

    def ref(self, tag_or_digest: str) -> str:
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.registry}/{self.name}{sep}{tag_or_digest}"


def repository_of(image: str) -> Repository:
    """The repository an image ref names: ``127.0.0.1:5000/house-price:7`` → (``127.0.0.1:5000``,
    ``house-price``); no registry part means Docker Hub (``library/`` for a bare name)."""
    ref = image.split("@", 1)[0]
    head, _, tail = ref.rpartition(":")
    if head and "/" not in tail:
        ref = head
    first, sep, rest = ref.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, name = first, rest
    else:
        registry, name = "registry-1.docker.io", ref if "/" in ref else f"library/{ref}"
    if registry in DOCKER_HUB:
        registry = "registry-1.docker.io"
    return Repository(registry, name)


def model_tag(build_number: int) -> str:
    """``model-<build number>``: beside the image's own ``<build number>`` tag (for people and GC;
    fetches go by the recorded manifest digest)."""
    return f"{TAG_PREFIX}{int(build_number)}"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelFile:
    """One file of a published model: its path in the artifacts, sha256 (hex) and size."""

    path: str
    sha256: str
    size: int

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def check_path(rel: str) -> str:
    """A recorded file path must stay inside the artifact directory (it names where a fetch writes)."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise RegistryError(f"refused model file path {rel!r}: not a plain relative path")
    return str(p)


@dataclass(frozen=True)
class PublishedModel:
    """Where a build's model went: recorded on the build as ``model`` (``to_dict``)."""

    ref: str  # <registry>/<name>:model-<N>, for people
    manifest: str  # sha256:… of the manifest: what fetches ask for
    files: tuple[ModelFile, ...]  # the model first, then its metadata file, if any

    @property
    def sha256(self) -> str:
        return self.files[0].sha256

    @property
    def repository(self) -> Repository:
        return repository_of(self.ref)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "manifest": self.manifest,
            "sha256": self.sha256,
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PublishedModel | None:
        """The record, or None for a build that published none (or a malformed record)."""
        try:
            files = tuple(
                ModelFile(check_path(str(f["path"])), str(f["sha256"]), int(f["size"])) for f in d["files"]
            )
            published = cls(str(d["ref"]), str(d["manifest"]), files)
        except (KeyError, TypeError, ValueError, RegistryError):
            return None
        return published if files and published.manifest.startswith("sha256:") else None


def config_blob(repo: str, number: int, sha: str, files: tuple[ModelFile, ...]) -> bytes:
    """The artifact's config: what the model is (for a person reading the registry), canonical JSON."""
    doc = {
        "repo": repo,
        "build_number": number,
        "revision": sha,
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in files],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def manifest_blob(config: bytes, files: tuple[ModelFile, ...], annotations: Mapping[str, str]) -> bytes:
    """The OCI image manifest of the model artifact (image-spec 1.1 ``artifactType``; the config's own
    media type says the same for registries that predate it)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": ARTIFACT_TYPE, "digest": digest_of(config), "size": len(config)},
        "layers": [
            {"mediaType": FILE_TYPE, "digest": f.digest, "size": f.size, "annotations": {TITLE: f.path}}
            for f in files
        ],
        "annotations": dict(annotations),
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def check_manifest(body: bytes, want: PublishedModel) -> None:
    """The fetched manifest is the recorded one (its digest) and lists exactly the recorded files."""
    if digest_of(body) != want.manifest:
        raise RegistryError(
            f"the registry's manifest for {want.ref} has digest {digest_of(body)}, "
            f"not the recorded {want.manifest}: refused"
        )
    layers = json.loads(body).get("layers") or []
    got = [(str(x.get("digest")), int(x.get("size", -1))) for x in layers]
    if got != [(f.digest, f.size) for f in want.files]:
        raise RegistryError(f"the manifest {want.manifest} does not list the recorded model files: refused")


def secure(registry: str, daemon_info: Mapping[str, Any]) -> bool:
    """Whether to speak HTTPS to ``registry``, as the Docker daemon decides it (``docker info``
    RegistryConfig: an index config's ``Secure``, else the insecure CIDRs, which hold 127.0.0.0/8)."""
    cfg = daemon_info.get("RegistryConfig") or {}
    index = (cfg.get("IndexConfigs") or {}).get(registry)
    if index is not None:
        return bool(index.get("Secure", True))
    if registry.startswith("["):  # [v6 address]:port
        host = registry[1:].partition("]")[0]
    else:
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addrs = {ipaddress.ip_address(a[4][0]) for a in socket.getaddrinfo(host, None)}
        except (OSError, ValueError):
            return True
    nets = []
    for cidr in cfg.get("InsecureRegistryCIDRs") or []:
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.ip_network(cidr))
    return not any(a in n for a in addrs for n in nets)


def bearer_params(challenge: str) -> dict[str, str]:
    """``Bearer realm="…",service="…",scope="…"`` → its parameters."""
    out: dict[str, str] = {}
    rest = challenge.partition(" ")[2]
    for part in _split_params(rest):
        key, _, value = part.partition("=")
        out[key.strip().lower()] = value.strip().strip('"')
    return out


def _split_params(s: str) -> Iterator[str]:
    """Split on commas outside quotes (a scope holds commas: ``repository:x:pull,push``)."""
    cur, quoted = "", False
    for ch in s:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            yield cur
            cur = ""
        else:
            cur += ch
    if cur.strip():
        yield cur


# -- the thin HTTP layer ----------------------------------------------------------------------------


class Registry:
    """One repository of one registry over the distribution API (push and pull)."""

    def __init__(
        self,
        repository: Repository,
        auth: Mapping[str, str] | None = None,
        https: bool = True,
        timeout: float = defaults.MODEL_REGISTRY_TIMEOUT,
        push: bool = True,
    ) -> None:
        self.repository = repository
        self.actions = "pull,push" if push else "pull"  # the token scope: a deploy only reads
        self.auth = (auth["username"], auth["password"]) if auth else None
        self.base = f"{'https' if https else 'http'}://{repository.registry}/v2/{repository.name}/"
        self.timeout = timeout
        self.session = requests.Session()
        self._authorization = ""

    def close(self) -> None:
        self.session.close()

    def _send(self, method: str, url: str, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        for attempt in (1, 2):
            if self._authorization:
                headers["Authorization"] = self._authorization
            try:
                res = self.session.request(method, url, headers=headers, timeout=self.timeout, **kw)
            except requests.RequestException as exc:
                raise RegistryError(
                    f"{self.repository.registry} is unreachable: {exc}", unreachable=True
                ) from exc
            if res.status_code != 401 or attempt == 2:
                return res
            res.close()
            self._authorization = self._login(res.headers.get("WWW-Authenticate", ""))
            if "data" in kw and hasattr(kw["data"], "seek"):
                kw["data"].seek(0)
        raise AssertionError("unreachable")

    def _login(self, challenge: str) -> str:
        """The Authorization header for a 401's challenge: Basic with the credentials, or a Bearer
        token from the challenge's realm (with the credentials, if any)."""
        scheme = challenge.partition(" ")[0].lower()
        if scheme == "basic" and self.auth:
            user, password = self.auth
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if scheme != "bearer":
            raise RegistryError(
                f"{self.repository.registry} asks for credentials ({challenge or 'no challenge'}): set "
                "docker_push.auth (or the environment's registry_login)"
            )
        p = bearer_params(challenge)
        scope = f"repository:{self.repository.name}:{self.actions}"
        try:
            res = self.session.get(
                p.get("realm", ""),
                params={"service": p.get("service", ""), "scope": scope},
                auth=self.auth,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise RegistryError(f"the token service of {self.repository.registry}: {exc}", True) from exc
        if res.status_code != 200:
            raise RegistryError(
                f"{self.repository.registry} refused the credentials (HTTP {res.status_code})"
            )
        token = res.json().get("token") or res.json().get("access_token") or ""
        return f"Bearer {token}"

    def _check(self, res: requests.Response, what: str, ok: tuple[int, ...]) -> requests.Response:
        if res.status_code in ok:
            return res
        detail = res.text[:300].strip()
        hint = "; check the credentials (docker_push.auth)" if res.status_code in (401, 403) else ""
        raise RegistryError(
            f"{what}: {self.repository.registry} answered HTTP {res.status_code} {detail}{hint}"
        )

    def has_blob(self, digest: str) -> bool:
        res = self._send("HEAD", self.base + f"blobs/{digest}")
        return res.status_code == 200

    def push_blob(self, digest: str, data: bytes | Path) -> None:
        """Monolithic upload (POST, then PUT with the digest); nothing if the registry has it already."""
        if self.has_blob(digest):
            return
        res = self._check(self._send("POST", self.base + "blobs/uploads/"), "starting a blob upload", (202,))
        location = urljoin(self.base, res.headers.get("Location", ""))
        url = location + ("&" if "?" in location else "?") + f"digest={digest}"
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(data, Path):
            with data.open("rb") as f:
                headers["Content-Length"] = str(data.stat().st_size)
                res = self._send("PUT", url, data=f, headers=headers)
        else:
            res = self._send("PUT", url, data=data, headers=headers)
        self._check(res, f"uploading blob {digest[:19]}", (201, 204))

    def put_manifest(self, tag: str, body: bytes) -> str:
        res = self._send(
            "PUT", self.base + f"manifests/{tag}", data=body, headers={"Content-Type": MANIFEST_TYPE}
        )
        self._check(res, f"putting the manifest {tag}", (201,))
        got = res.headers.get("Docker-Content-Digest", "")
        if got and got != digest_of(body):
            raise RegistryError(f"the registry stored the manifest as {got}, not {digest_of(body)}")
        return digest_of(body)

    def get_manifest(self, digest: str) -> bytes:
        res = self._send(
            "GET", self.base + f"manifests/{digest}", headers={"Accept": MANIFEST_TYPE}, stream=True
        )
        with res:
            self._check(res, f"fetching the manifest {digest}", (200,))
            return _read_capped(res, MAX_MANIFEST_BYTES, f"the manifest {digest}")

    def get_blob(self, f: ModelFile, dest: Path) -> None:
        """Stream the blob into ``dest``, stopping at its recorded size; its sha256 must match."""
        if f.size > MAX_MODEL_BYTES:
            raise RegistryError(f"{f.path} is {f.size} bytes, over the {MAX_MODEL_BYTES}-byte cap: refused")
        res = self._send("GET", self.base + f"blobs/{f.digest}", stream=True)
        with res:
            self._check(res, f"fetching {f.path} ({f.digest[:19]})", (200,))
            h, n = hashlib.sha256(), 0
            with dest.open("wb") as out:
                for chunk in res.iter_content(CHUNK):
                    n += len(chunk)
                    if n > f.size:
                        raise RegistryError(
                            f"the registry's blob for {f.path} is larger than recorded: refused"
                        )
                    h.update(chunk)
                    out.write(chunk)
        if n != f.size or h.hexdigest() != f.sha256:
            raise RegistryError(
                f"the registry's blob for {f.path} has sha256 {h.hexdigest()[:16]} ({n} bytes), not the "
                f"recorded {f.sha256[:16]} ({f.size} bytes): refused (tampered or corrupt)"
            )


def _read_capped(res: requests.Response, cap: int, what: str) -> bytes:
    data = b""
    for chunk in res.iter_content(CHUNK):
        data += chunk
        if len(data) > cap:
            raise RegistryError(f"{what} is over {cap} bytes: refused")
    return data


# -- publish and fetch ------------------------------------------------------------------------------


def model_files(art: artifacts.ModelArtifact, rel: str) -> tuple[ModelFile, ...]:
    """The files of ``art`` (found at ``rel``) as they will be published: the model at ``rel``, then its
    metadata where ``find_model`` looks for it, so a fetch puts both where that finds them."""
    model = PurePosixPath(check_path(rel))
    out = []
    for p, path in zip(art.files(), (model, model.with_suffix(".json")), strict=False):
        size = p.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise StepFailed(f"the model file {p.name} is {size} bytes, over the {MAX_MODEL_BYTES}-byte cap")
        sha = art.sha256 if p == art.path else artifacts.sha256_file(p)
        out.append(ModelFile(str(path), sha, size))
    return tuple(out)


def publish(
    reg: Registry, art: artifacts.ModelArtifact, tag: str, config: bytes, files: tuple[ModelFile, ...]
) -> PublishedModel:
    """Push the files, the config and the manifest; the record of where the model went."""
    for f, path in zip(files, art.files(), strict=True):
        reg.push_blob(f.digest, path)
    reg.push_blob(digest_of(config), config)
    body = manifest_blob(config, files, {TITLE: files[0].path})
    manifest = reg.put_manifest(tag, body)
    return PublishedModel(reg.repository.ref(tag), manifest, files)


def fetch(reg: Registry, published: PublishedModel, root: Path) -> None:
    """Download the recorded files into ``root`` (a build's artifact directory), each checked against
    its recorded sha256 before it is moved into place; a pruned directory is whole again after."""
    check_manifest(reg.get_manifest(published.manifest), published)
    staging = root.parent / f".fetch-{root.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        for i, f in enumerate(published.files):
            reg.get_blob(f, staging / str(i))
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(artifacts.ARTIFACTS_MODE)
        for i, f in enumerate(published.files):
            dest = root / check_path(f.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / str(i), dest)
        (root / artifacts.PRUNED).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# -- what the steps call ----------------------------------------------------------------------------


def push_auth(pipeline: Pipeline, env_name: str | None = None) -> dict[str, str] | None:
    """The registry credentials of the pipeline's push step, else of environment ``env_name``."""
    for step in pipeline.steps:
        if step.docker_push is not None and step.docker_push.auth is not None:
            a = step.docker_push.auth
            return {"username": a.username, "password": a.password}
    env = pipeline.environments.get(env_name or "")
    login = env.registry_login if env is not None else None
    return {"username": login.username, "password": login.password} if login else None


def registry_for(ctx: StepContext, image: str, auth: Mapping[str, str] | None, push: bool) -> Registry:
    repo = repository_of(image)
    try:
        info = ctx.docker.info()
    except Exception as exc:  # the daemon decides TLS; without it nothing else in the step works either
        raise InfrastructureError(f"docker info (to reach the registry {repo.registry}): {exc}") from exc
    return Registry(repo, auth, https=secure(repo.registry, info), push=push)


def publish_build_model(ctx: StepContext, auth: Mapping[str, str] | None) -> PublishedModel | None:
    """After the image push: publish the model this build wrote (none: nothing to do) and record it."""
    rel = artifacts.model_path(ctx.pipeline)
    art = artifacts.find_model(ctx.settings.workspace, ctx.build.id, rel)
    if art is None:
        return None
    files = model_files(art, rel)
    config = config_blob(ctx.build.repo, ctx.build.number, ctx.build.sha, files)
    reg = registry_for(ctx, ctx.pipeline.image, auth, push=True)
    try:
        published = publish(reg, art, model_tag(ctx.build.number), config, files)
    except RegistryError as exc:
        raise InfrastructureError(f"publishing the model {rel} to the registry failed: {exc}") from exc
    finally:
        reg.close()
    ctx.build.model = published.to_dict()
    ctx.log.line(f"published model {art.sha256[:16]} as {published.ref} ({published.manifest[:19]})")
    return published


def published_model(build: Any) -> PublishedModel | None:
    return PublishedModel.from_dict(build.model) if getattr(build, "model", None) else None


def local_or_fetched(
    ctx: StepContext, build_id: int, rel: str, auth: Mapping[str, str] | None
) -> artifacts.ModelArtifact | None:
    """Build ``build_id``'s model ``rel``: this worker's copy, else (none here, or pruned here) the one
    that build published, fetched into this worker's artifacts and checked byte for byte. None: the
    build wrote no model. A pruned copy that was never published raises ``ArtifactsPruned``."""
    ws = ctx.settings.workspace
    pruned: artifacts.ArtifactsPruned | None = None
    try:
        art = artifacts.find_model(ws, build_id, rel)
    except artifacts.ArtifactsPruned as exc:
        art, pruned = None, exc
    if art is not None:
        return art
    source = ctx.store.get_build(build_id)
    published = published_model(source)
    if published is None or published.files[0].path != str(PurePosixPath(rel)):
        if pruned is not None:
            raise pruned
        return None
    reg = registry_for(ctx, published.ref, auth, push=False)
    try:
        fetch(reg, published, artifacts.artifacts_dir(ws, build_id))
    except RegistryError as exc:
        if exc.unreachable:
            raise InfrastructureError(f"fetching the model of build #{source.number}: {exc}") from exc
        raise ModelUnavailable(f"the model of build #{source.number} ({published.ref}): {exc}") from exc
    finally:
        reg.close()
    ctx.log.line(
        f"model of build #{source.number}: fetched {published.ref} ({published.manifest[:19]}) "
        f"from the registry, sha256 {published.sha256[:16]} verified"
    )
    return artifacts.find_model(ws, build_id, rel)
