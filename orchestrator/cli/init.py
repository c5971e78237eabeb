"""``mlship init [DIR]``: a starter pipeline.yaml for a repository with a Dockerfile, validated.

It asks nothing: the container port is the Dockerfile's EXPOSE, the health path is ``/`` unless its
HEALTHCHECK names a URL, and QA and Prod are the embedded hosts of ``mlship standalone``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.cli import command
from orchestrator.errors import ConfigError, PipelineError

_URL_PATH = re.compile(r"https?://[^/\s'\"]+(/[^\s'\"|;&)]*)?")
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}?")
# Host ports for the two environments: fixed so the README's curl lines work; change them freely.
QA_PUBLISH, PROD_PUBLISH = 8700, 8800


@dataclass(frozen=True)
class DockerfileFacts:
    """What a starter pipeline needs from a Dockerfile (its final stage)."""

    port: int | None
    health_path: str = "/"
    base_image_arg: bool = False  # declares ARG BASE_IMAGE: the build passes the server's base image


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _expand(value: str, known: dict[str, str]) -> str:
    return _VAR.sub(lambda m: known.get(m.group(1)) or m.group(2) or "", value)


def _defaults(kind: str, args: str, known: dict[str, str]) -> None:
    """Record ARG/ENV defaults (``NAME=value`` pairs, or ENV's legacy ``NAME value``)."""
    if kind == "ENV" and "=" not in args.split(" ", 1)[0]:
        name, _, value = args.partition(" ")
        known[name] = value.strip()
        return
    for item in shlex.split(args, posix=True):
        name, eq, value = item.partition("=")
        if eq:
            known[name] = _expand(value, known)


def _health_path(args: str) -> str | None:
    if args.upper().startswith("NONE"):
        return None
    found = _URL_PATH.search(args)
    return (found.group(1) or "/") if found else None


def read_dockerfile(text: str) -> DockerfileFacts:
    """Port, health path and BASE_IMAGE use of the final stage of a Dockerfile."""
    port: int | None = None
    health: str | None = None
    known: dict[str, str] = {}
    base_arg = False
    for kind, args in _instructions(text):
        if kind == "FROM":  # a new stage: only the last one's EXPOSE and HEALTHCHECK count
            port, health = None, None
        elif kind in ("ARG", "ENV"):
            base_arg = base_arg or (kind == "ARG" and args.split("=", 1)[0].strip() == "BASE_IMAGE")
            _defaults(kind, args, known)
        elif kind == "EXPOSE":
            first = _expand(args, known).split()[0] if args.split() else ""
            number = first.split("/", 1)[0]
            port = int(number) if number.isdigit() else port
        elif kind == "HEALTHCHECK":
            health = _health_path(_expand(args, known))
    return DockerfileFacts(port, health or "/", base_arg)


def _environment(name: str, app: str, facts: DockerfileFacts, publish: int) -> list[str]:
    host = name.upper()
    return [
        f"  {name}:",
        f'    hosts: [{{host: "${{{host}_HOST}}", port: "${{{host}_PORT}}", user: "${{{host}_USER}}"}}]',
        "    container:",
        f"      name: {app}-{name}",
        f"      port: {facts.port}",
        f"      publish: {publish}",
        f"    health: {{path: {facts.health_path}, status: 200, interval: 1, timeout: 60, retries: 3}}",
    ]


def starter_pipeline(app: str, facts: DockerfileFacts, branch: str = "main") -> str:
    """The text of a starter pipeline.yaml: build, push, deploy to QA, then to Prod from ``branch``."""
    if facts.port is None:
        raise ConfigError("the Dockerfile has no EXPOSE: add `EXPOSE <port>` for the port the app listens on")
    build_args = ', build_args: {BASE_IMAGE: "${BASE_IMAGE}"}' if facts.base_image_arg else ""
    lines = [
        f"# Written by `mlship init`: build, push, deploy to QA, then Prod from {branch} (docs/pipeline.md)",
        "version: 1",
        f"name: {app}",
        f'image: "${{REGISTRY}}/{app}"',
        "steps:",
        "  - name: build",
        f'    docker_build: {{context: ., dockerfile: Dockerfile, tags: ["${{BUILD_NUMBER}}"]{build_args}}}',
        "  - name: push",
        '    docker_push: {tags: ["${BUILD_NUMBER}", latest]}',
        "  - name: deploy-qa",
        "    deploy: {environment: qa}",
        "  - name: deploy-prod",
        "    deploy: {environment: prod, promote: auto}",
        f"    when: {{branch: [{branch}]}}",
        "environments:",
        *_environment("qa", app, facts, QA_PUBLISH),
        *_environment("prod", app, facts, PROD_PUBLISH),
    ]
    return "\n".join(lines) + "\n"


def _app_name(directory: Path) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", directory.resolve().name.lower()).strip("-") or "app"


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", help="the repository (default: the current directory)")
    p.add_argument("--branch", default="main", help="the branch whose builds go on to Prod (default main)")
    p.add_argument("--force", action="store_true", help="overwrite an existing pipeline.yaml")


@command("init", "write a starter pipeline.yaml for a repository with a Dockerfile", _configure)
def init(args: argparse.Namespace) -> int:
    from orchestrator.devstack.stack import PLACEHOLDER_VARS
    from orchestrator.pipeline import BUILTIN_VARS, load_pipeline

    directory = Path(args.dir)
    dockerfile, target = directory / "Dockerfile", directory / "pipeline.yaml"
    if not dockerfile.is_file():
        raise ConfigError(f"{dockerfile} does not exist: mlship init needs the repository's Dockerfile")
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists already (use --force to replace it)")
    text = starter_pipeline(_app_name(directory), read_dockerfile(dockerfile.read_text()), args.branch)
    known = {**{name: "x" for name in BUILTIN_VARS}, **PLACEHOLDER_VARS}
    try:
        pipeline = load_pipeline(text, str(target), variables=known)
    except PipelineError as exc:  # a Dockerfile this reader misread; say so rather than write it
        print(f"mlship init wrote nothing: the starter pipeline is invalid:\n{exc}", file=sys.stderr)
        return 1
    target.write_text(text)
    steps = ", ".join(s.name for s in pipeline.steps)
    print(f"wrote {target}: {steps}; check it with `mlship validate {target}`")
    return 0
